"""Comparison tables across runs and the one-file report of a run.

A metrics table has one row per weights (or run x weights when comparing) and the
columns `<split> top-1`, `<split> top-<k>` in percent, the layout of the reference
thesis's result tables. `write_run_report` writes `report.md` (PNG links) and a
self-contained `report.html` (PNG embedded as base64) into the run directory, with
figures and CSVs under `report/`.

Example::

    compare_runs(["runs/vgg19-bottleneck", "runs/vgg19-finetune"])
    #                 run weights  val top-1  val top-5  test top-1  test top-5
    # 0  vgg19-bottleneck    best       88.4       ...
    write_run_report("runs/vgg19-finetune")  # -> PosixPath('runs/vgg19-finetune/report.md')
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tltk.errors import TltkError
from tltk.evaluation import analysis, gradcam, plots
from tltk.evaluation.metrics import covers_all, default_k, interval, plus_minus
from tltk.fileio import REEVALUATE, damaged, read_csv, write_csv, write_text
from tltk.log import duration
from tltk.rundir import RunDir, open_run

SPLIT_ORDER = ("train", "val", "test")
WEIGHTS_ORDER = ("original", "best", "best+tta", "final", "final+tta", "ema", "ema+tta",
                 "ensemble")
REPORT_DIR = "report"


# --- tables ------------------------------------------------------------------------------
def ordered(values, order) -> list:
    """Unique `values`, those named in `order` first (in that order), then the rest."""
    unique = list(dict.fromkeys(values))
    return [v for v in order if v in unique] + [v for v in unique if v not in order]


def metrics_table(metrics: pd.DataFrame, index=("weights",), classes: int | None = None,
                  sizes: dict[str, int] | None = None) -> pd.DataFrame:
    """Pivot `metrics.csv` rows into one row per `index` and `<split> top-1/top-k` columns.

    The top-k column is named by its k (`val top-5`) when every row of the split shares
    it, and left out when k covers all `classes` (it is then always 100 %). A small
    split (`sizes`: images per split) gets a `<split> top-1 ±` column, the half-width
    of the 95 % interval in points (see `metrics.plus_minus`). An
    `outside` column (full-original baselines) becomes `<split> outside`.

    Example:
        >>> m = pd.DataFrame({"weights": ["best", "best"], "split": ["val", "test"],
        ...                   "top1": [90.0, 88.0], "topk": [99.0, 98.5], "k": [2, 2]})
        >>> list(metrics_table(m).columns)
        ['weights', 'val top-1', 'val top-2', 'test top-1', 'test top-2']
    """
    index = list(index)
    metrics = metrics.drop_duplicates(subset=[*index, "split"], keep="last")
    rows = metrics[index].drop_duplicates()
    rows = rows.iloc[_row_order(list(rows.itertuples(index=False, name=None)))]
    row_index = pd.MultiIndex.from_frame(rows) if len(index) > 1 else pd.Index(rows[index[0]])
    columns = {}
    for split in ordered(metrics["split"], SPLIT_ORDER):
        part = metrics[metrics["split"] == split].set_index(index)
        if len(index) == 1:
            part.index = pd.Index(part.index, name=index[0])
        ks = part["k"].dropna().unique()
        k_label = f"top-{int(ks[0])}" if len(ks) == 1 else "top-k"
        columns[f"{split} top-1"] = part["top1"].reindex(row_index)
        n = (sizes or {}).get(split)
        if plus_minus(50.0, n):
            columns[f"{split} top-1 ±"] = columns[f"{split} top-1"].map(
                lambda top1, n=n: round(interval(top1, n)))
        if not covers_all(ks, classes):
            columns[f"{split} {k_label}"] = part["topk"].reindex(row_index)
        if "outside" in part and part["outside"].notna().any():
            columns[f"{split} outside"] = part["outside"].reindex(row_index)
    table = pd.DataFrame(columns, index=row_index)
    return table.reset_index()


def _row_order(rows: list[tuple]) -> list[int]:
    """Positions of `rows` sorted by run (first appearance), then weights (WEIGHTS_ORDER)."""
    first = {}
    for row in rows:
        first.setdefault(row[:-1], len(first))

    def key(i):
        weights = rows[i][-1]
        rank = WEIGHTS_ORDER.index(weights) if weights in WEIGHTS_ORDER else len(WEIGHTS_ORDER)
        return first[rows[i][:-1]], rank
    return sorted(range(len(rows)), key=key)


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """A run's (or baseline's, or ensemble's) `metrics.csv`, with a clear error if absent."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise TltkError(f"RUN: {run_dir} has no metrics.csv (the run has not been evaluated); "
                        f"run `tltk evaluate {run_dir} --write` first")
    return RunDir(run_dir).metrics()


def run_labels(run_dirs) -> list[str]:
    """Short unique labels: the directory name, lengthened by parents only where names clash.

    Example:
        >>> run_labels(["a/run", "b/run", "c/other"])
        ['a/run', 'b/run', 'other']
    """
    paths = [Path(p).resolve() for p in run_dirs]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p.parts[-d:]) for p, d in zip(paths, depth)]
        owners: dict[str, set] = {}
        for label, path in zip(labels, paths):
            owners.setdefault(label, set()).add(path)
        # Lengthen only labels shared by different directories, up to below the root.
        clashing = [i for i, label in enumerate(labels)
                    if len(owners[label]) > 1 and depth[i] < len(paths[i].parts) - 1]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    # The same directory given twice still needs distinct labels.
    seen: Counter = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def compare_runs(run_dirs) -> pd.DataFrame:
    """One table over runs: rows run x weights, columns split x {top-1, top-k} (percent).

    Any directory with a `metrics.csv` works: runs, `tltk baseline` and `tltk ensemble`
    outputs.
    """
    if not run_dirs:
        raise TltkError("RUN: give at least one run directory")
    frames = []
    for label, path in zip(run_labels(run_dirs), run_dirs):
        metrics = read_metrics(path)
        metrics.insert(0, "run", label)
        frames.append(metrics)
    return metrics_table(pd.concat(frames, ignore_index=True), index=("run", "weights"))


def _cell(value, floatfmt: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if math.isnan(value) else format(value, floatfmt)
    return str(value).replace("|", "\\|")


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".1f") -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned, NaN shown as '–'.

    Example:
        >>> print(to_markdown(pd.DataFrame({"weights": ["best"], "val top-1": [91.25]})))
        | weights | val top-1 |
        |:--|--:|
        | best | 91.2 |
    """
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    align = "|" + "|".join("--:" if pd.api.types.is_numeric_dtype(frame[c]) else ":--"
                           for c in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v, floatfmt) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, align, *body])


def write_table(frame: pd.DataFrame, out_dir: str | Path, name: str = "comparison") -> list[Path]:
    """Write `<name>.csv` and `<name>.md` into `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    write_csv(csv_path, frame.round(4))
    write_text(md_path, to_markdown(frame) + "\n")
    return [csv_path, md_path]


# --- the run report -----------------------------------------------------------------------
class _Doc:
    """Report blocks rendered twice: markdown with linked PNGs, HTML with embedded PNGs."""

    def __init__(self, root: Path):
        self.root = root
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2):
        self.blocks.append(("heading", level, text))

    def para(self, text: str):
        self.blocks.append(("para", text))

    def table(self, frame: pd.DataFrame, floatfmt: str = ".1f"):
        self.blocks.append(("table", frame, floatfmt))

    def image(self, path: Path, alt: str):
        self.blocks.append(("image", path, alt))

    def markdown(self) -> str:
        out = []
        for kind, *args in self.blocks:
            if kind == "heading":
                out.append("#" * args[0] + " " + args[1])
            elif kind == "para":
                out.append(args[0])
            elif kind == "table":
                out.append(to_markdown(*args))
            else:
                out.append(f"![{args[1]}]({args[0].relative_to(self.root).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = []
        for kind, *args in self.blocks:
            if kind == "heading":
                out.append(f"<h{args[0]}>{html.escape(args[1])}</h{args[0]}>")
            elif kind == "para":
                out.append(f"<p>{html.escape(args[0]).replace('`', '')}</p>")
            elif kind == "table":
                frame, floatfmt = args
                out.append(frame.to_html(index=False, border=0, na_rep="–",
                                         float_format=f"{{:{floatfmt}}}".format))
            else:
                data = base64.b64encode(args[0].read_bytes()).decode("ascii")
                out.append(f'<img alt="{html.escape(args[1])}" '
                           f'src="data:image/png;base64,{data}">')
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}"
                 "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}"
                 "img{max-width:100%}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{style}</style></head>\n"
                f"<body>\n" + "\n".join(out) + "\n</body></html>\n")


def _config(run: RunDir) -> dict:
    # The raw mapping, not a RunConfig: a report must not fail on a config written by
    # another version; a damaged file is still refused.
    return run.config_dict()


def run_top_k(run: RunDir, num_classes: int) -> int:
    """The run's k: from metrics.csv, else config `top_k`, else the default for C classes."""
    if run.file("metrics.csv").is_file():
        ks = run.metrics()["k"].dropna()
        if len(ks):
            return int(ks.iloc[0])
    return int(_config(run).get("top_k") or default_k(num_classes))


def prediction_files(run: RunDir) -> list[tuple[str, str]]:
    """(weights, split) of every saved `predictions/<weights>-<split>.npz`."""
    folder = run.file("predictions")
    if not folder.is_dir():
        return []
    pairs = [tuple(p.stem.split("-", 1)) for p in sorted(folder.glob("*-*.npz"))]
    return [(w, s) for w, s in pairs]


def pick_predictions(run: RunDir, weights: str = "best", split: str | None = None):
    """The (weights, split) the report analyses: `split` if given, else test, else val."""
    available = prediction_files(run)
    if split is not None:
        return (weights, split) if (weights, split) in available else None
    for candidate in ("test", "val"):
        if (weights, candidate) in available:
            return weights, candidate
    same = [pair for pair in available if pair[0] == weights]
    return (same or available or [None])[0]


def write_run_report(run_dir: str | Path, split: str | None = None,
                     weights: str = "best") -> Path:
    """Write `report.md` and `report.html` for a run; returns the markdown path.

    The analysis (confusion matrix, most-confused pairs, per-class accuracy,
    misclassified images) uses `predictions/<weights>-<split>.npz`, by default the best
    weights on the test split (val when there is no test split).

    Example::

        write_run_report("runs/demo-scratch")  # -> PosixPath('runs/demo-scratch/report.md')
    """
    run = open_run(run_dir)
    root = run.path
    figures = root / REPORT_DIR
    config = _config(run)
    class_names = run.class_names() if run.file("classes.json").is_file() else []
    k = run_top_k(run, len(class_names))
    doc = _Doc(root)
    doc.heading(f"Run {root.name}", 1)
    doc.para(_summary(run, config, class_names))
    _metrics_section(doc, run)
    _curves_section(doc, run, figures, k)
    _analysis_section(doc, run, figures, class_names, pick_predictions(run, weights, split))
    _skipped_section(doc, run)
    write_text(root / "report.html", doc.html(f"tltk run {root.name}"))
    md_path = root / "report.md"
    write_text(md_path, doc.markdown())
    return md_path


def _summary(run: RunDir, config: dict, class_names: list[str]) -> str:
    status = (run.status() or {}).get("status", "unknown")
    data = config.get("data") or {}
    stages = ", ".join(f"{s.get('name')} ({s.get('epochs')} epochs)"
                       for s in config.get("stages") or [] if isinstance(s, dict))
    weights = config.get("weights", "?")
    # A model file (or preset) backbone carries its weights: name the file, not 'imagenet'.
    source = config.get("backbone", "?")
    kind = "keras-hub preset" if str(source).startswith("hub:") else "model file"
    backbone = f"{kind} {source} (with its own weights)" if weights == "own" else source
    parts = [f"Status: {status}", f"recipe: {config.get('recipe', '?')}",
             f"backbone: {backbone}", *([] if weights == "own" else [f"weights: {weights}"]),
             f"dataset: {data.get('dataset', '?')}", f"classes: {len(class_names)}"]
    if stages:
        parts.append(f"stages: {stages}")
    return "; ".join(parts) + "." + _timings(run)


def _timings(run: RunDir) -> str:
    """Split sizes, seconds per stage and where the best weights are, from run.json."""
    status = run.status() or {}
    text = ""
    if isinstance(status.get("splits"), dict):
        text += " Images per split: " + ", ".join(f"{k} {v}" for k, v in
                                                   status["splits"].items()) + "."
    stages = [s for s in status.get("stages") or [] if isinstance(s, dict) and "seconds" in s]
    if stages:
        text += " Stage time: " + ", ".join(f"{s.get('name')} {duration(s['seconds'])}"
                                            for s in stages) + "."
    if run.file("best.keras").is_file():
        best = status.get("best") if isinstance(status.get("best"), dict) else {}
        where = (f" (epoch {best['epoch'] + 1}, stage {best.get('stage')})"
                 if isinstance(best.get("epoch"), int) else "")
        text += f" Best weights: {run.file('best.keras').resolve()}{where}."
    return text


def _metrics_section(doc: _Doc, run: RunDir) -> None:
    doc.heading("Accuracy (%)")
    if run.file("metrics.csv").is_file():
        metrics = run.metrics()
        sizes = {split: len(run.predictions(weights, split)["labels"])
                 for weights, split in prediction_files(run) if weights == "best"}
        doc.table(metrics_table(metrics, classes=len(run.class_names()), sizes=sizes))
        doc.para(_evaluated(metrics, run))
    else:
        doc.para("No metrics.csv: the run has not been evaluated yet.")


def _evaluated(metrics: pd.DataFrame, run: RunDir) -> str:
    """Which splits were evaluated, and a left-out `v2` (dogs with --no-v2) said aloud."""
    text = "Splits evaluated: " + ", ".join(dict.fromkeys(metrics["split"])) + "."
    data = (_config(run) or {}).get("data") or {}
    if data.get("dataset") == "dogs" and data.get("v2") is False:
        text += " ImageNetV2 (v2) not evaluated: the run was started with --no-v2."
    return text


def _curves_section(doc: _Doc, run: RunDir, figures: Path, k: int) -> None:
    doc.heading("Learning curves")
    history = run.history() if run.file("history.csv").is_file() else pd.DataFrame()
    if history.empty:
        doc.para("No history.csv: no training epoch recorded (yet).")
        return
    path = plots.plot_learning_curves(history, figures / "curves.png", k=k)
    doc.image(path, "learning curves")
    doc.para(f"{len(history)} epochs over stages: "
             + ", ".join(name for name, _, _ in plots.stage_spans(history)) + ".")


def _analysis_section(doc: _Doc, run: RunDir, figures: Path, class_names, picked) -> None:
    if picked is None or not class_names:
        doc.heading("Errors")
        doc.para("No saved predictions (predictions/*.npz): nothing to analyse.")
        return
    weights, split = picked
    tag = f"{weights}-{split}"
    data = run.predictions(weights, split)
    if data["probs"].shape[1] != len(class_names):  # a file from a run on other classes
        raise damaged(run.file("predictions") / f"{tag}.npz",
                      f"damaged (probabilities of {data['probs'].shape[1]} classes, "
                      f"classes.json lists {len(class_names)})", REEVALUATE)
    result = analysis.analyse(data["probs"], data["labels"], class_names, data.get("paths"))
    doc.heading(f"Errors: {weights} weights on the {split} split ({result.num_examples} images)")
    doc.image(plots.plot_confusion(result.matrix, class_names, figures / f"confusion-{tag}.png",
                                   title=f"{tag}: confusion (row-normalised)"), "confusion")
    doc.heading("Per-class precision, recall and F1 (%)", 3)
    write_csv(figures / f"scores-{tag}.csv", result.scores)
    doc.table(result.scores)
    mistakes = analysis.mistakes_table(data["probs"], np.asarray(data["labels"]), class_names,
                                       data.get("paths"))
    write_csv(run.file("mistakes.csv"), mistakes)
    doc.para(f"mistakes.csv lists all {len(mistakes)} misclassified {split} images (file, "
             "true and predicted label, confidence, loss), most confident first, for relabelling.")
    doc.heading("Most-confused pairs", 3)
    write_csv(figures / f"confused-{tag}.csv", result.confused)
    if result.confused.empty:
        doc.para("No misclassifications.")
    else:
        doc.table(result.confused.rename(columns={"rate": "rate (%)"}))
    doc.heading("Per-class accuracy (worst first)", 3)
    write_csv(figures / f"per_class-{tag}.csv", result.per_class)
    doc.table(result.per_class.rename(columns={"accuracy": "accuracy (%)"}))
    doc.heading("Most confident mistakes", 3)
    if result.mistakes.empty:
        doc.para("No misclassified images.")
    elif result.has_paths:
        heat = gradcam.mistake_overlays(run.path, weights, result.mistakes["path"])
        doc.image(plots.plot_misclassified(result.mistakes, figures / f"misclassified-{tag}.png",
                                           heatmaps=heat), "misclassified images")
        if heat is not None:
            doc.para("Grad-CAM of the predicted class at the backbone's last feature map: "
                     "red marks the regions that drove the wrong prediction.")
    else:
        doc.para(f"The {split} split is not file-backed (its predictions carry no `paths`), "
                 "so no image grid is shown; the mistakes are listed by example index.")
        doc.table(result.mistakes.rename(columns={"confidence": "confidence (%)"}))


def _skipped_section(doc: _Doc, run: RunDir) -> None:
    path = run.file("skipped.csv")
    if path.is_file():
        skipped = read_csv(path, ["path", "reason"])
        doc.heading("Skipped files")
        doc.para(f"{len(skipped)} file(s) were skipped while loading the data; "
                 "see skipped.csv.")
        doc.table(skipped.head(20))


def write_report(run_dirs, out: str | Path | None = None) -> list[Path]:
    """`tltk report`: one RUN regenerates its report; several write a comparison to `out`."""
    run_dirs = [Path(p) for p in run_dirs]
    written = []
    if len(run_dirs) == 1:
        written.append(write_run_report(run_dirs[0]))
    elif out is None:
        raise TltkError("--out: comparing several runs needs --out DIR for the table")
    if out is not None:
        written += write_table(compare_runs(run_dirs), out)
    return written
