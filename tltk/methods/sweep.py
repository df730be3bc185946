"""The freeze-depth x target-size sweep (Soekhoe, van der Putten & Plaat 2016).

For every training-set size (images per class) and every freeze depth (how many
backbone blocks, counted from the bottom, stay frozen while the rest fine-tunes), the
recipe's stages run `repeats` times, plus a from-scratch baseline CNN per size. Depth 0
fine-tunes everything; depth `all` keeps the whole backbone frozen, so its later
stages only go on training the head. Every condition keeps the first (head) stage as
the recipe declares it and changes only what later stages unfreeze.

The validation and test sets are the same for every run (the split seed is fixed);
each repeat draws its own subsample, initial head and augmentation (seed + repeat).

Writes to OUT: `runs/<condition>/` (ordinary run directories, so a rerun skips the
finished ones and resumes an interrupted one), `sweep_runs.csv` (one row per run),
`sweep.csv` (mean and std over repeats), `sweep.png` (accuracy vs frozen depth, one
line per size) and `sweep.md` (the table and the heuristic drawn from it).

Example::

    from tltk.recipes import folder
    base = folder.config().override({"data.path": "photos/", "weights": "mnv2.h5"})
    result = sweep(base, per_class=[10, 50], depths=[0, 8, "all"], repeats=2,
                   out="runs/sweep")
    print(result.heuristic)
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from tltk.config import BackboneOptions, HeadConfig, RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.evaluation.reports import read_metrics, to_markdown
from tltk.fileio import write_csv, write_text
from tltk.methods.unfreezing import require_head_stage
from tltk.models.backbones import config_backbone
from tltk.models.spec import BackboneSpec
from tltk.rundir import RunDir, same_run

ALL = "all"
SCRATCH = "scratch"
# The scratch baseline's one stage, as in `recipes.baseline` (epochs come from the sweep).
SCRATCH_STAGE = StageConfig("scratch", epochs=40, optimizer="adam", lr=1e-3, unfreeze="all")


@dataclass
class Condition:
    """One cell of the grid: a size, a freeze depth (or the scratch baseline), a repeat."""

    per_class: int | None  # None: every training image
    depth: int | str  # frozen blocks from the bottom, ALL, or SCRATCH
    repeat: int

    @property
    def name(self) -> str:
        size = "all" if self.per_class is None else self.per_class
        kind = SCRATCH if self.depth == SCRATCH else f"freeze{self.depth}"
        return f"n{size}-{kind}-r{self.repeat}"


@dataclass
class SweepResult:
    """The per-run rows, the mean/std table, the heuristic and where they were written."""

    runs: pd.DataFrame
    table: pd.DataFrame
    heuristic: str
    out: Path


def parse_sizes(text: str) -> list[int | None]:
    """`--per-class "10,25,all"` -> [10, 25, None].

    Example:
        >>> parse_sizes("10,all")
        [10, None]
    """
    sizes = []
    for item in _items(text, "--per-class"):
        if item == ALL:
            sizes.append(None)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise TltkError(f"--per-class: '{item}' is neither a positive integer nor 'all'")
    return sizes


def parse_depths(text: str, spec: BackboneSpec) -> list[int | str]:
    """`--freeze "0,2,all"` -> [0, 2, 'all']; a depth is checked against the backbone.

    Example::

        parse_depths("0,3,all", get_backbone("vgg16"))
        # [0, 3, 'all']
    """
    depths = []
    for item in _items(text, "--freeze"):
        if item == ALL:
            depths.append(ALL)
        elif item.isdigit() and int(item) <= len(spec.blocks):
            depths.append(ALL if int(item) == len(spec.blocks) else int(item))
        else:
            raise TltkError(f"--freeze: '{item}' is not 'all' or a block count from 0 to "
                            f"{len(spec.blocks)} ({spec.name} has {len(spec.blocks)} blocks)")
    return list(dict.fromkeys(depths))


def _items(text: str, option: str) -> list[str]:
    items = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not items:
        raise TltkError(f"{option}: give a comma-separated list, e.g. 10,50,all")
    return items


def unfreeze_for(depth: int | str, spec: BackboneSpec) -> int | str:
    """The `unfreeze` of a tuning stage that keeps the bottom `depth` blocks frozen.

    Depth 0 trains every layer, the stem included; depth n >= 1 trains the top
    `len(blocks) - n` named blocks (the stem stays frozen); ALL trains none.

    Example::

        unfreeze_for(2, get_backbone("vgg16"))
        # 3
    """
    if depth == 0:
        return "all"
    return 0 if depth == ALL else len(spec.blocks) - depth


def condition_config(base: RunConfig, spec: BackboneSpec, cond: Condition, out: Path,
                     scratch_epochs: int) -> RunConfig:
    """The run config of one condition: fixed split, the condition's size, depth and seed."""
    # Every condition and repeat evaluates on the base config's split: its fixed
    # data.split_seed (0 by default), or its seed when split_seed is None.
    split_seed = base.seed if base.data.split_seed is None else base.data.split_seed
    data = replace(base.data, per_class=cond.per_class, split_seed=split_seed)
    config = replace(base, data=data, seed=base.seed + cond.repeat,
                     out=str(out / "runs" / cond.name))
    if cond.depth == SCRATCH:
        stage = replace(SCRATCH_STAGE, epochs=scratch_epochs)
        # A model file's cut/blocks/preprocess options are not the scratch CNN's.
        return replace(config, backbone="scratch", weights="none", head=HeadConfig(layers=0),
                       backbone_options=BackboneOptions(), stages=[stage])
    unfreeze = unfreeze_for(cond.depth, spec)
    stages = [base.stages[0], *(replace(s, unfreeze=unfreeze) for s in base.stages[1:])]
    return replace(config, stages=stages)


def conditions(sizes, depths, repeats: int, scratch: bool) -> list[Condition]:
    """Every (size, depth, repeat), the scratch baseline last within each size."""
    kinds = [*depths, *([SCRATCH] if scratch else [])]
    return [Condition(size, depth, r) for size in sizes for depth in kinds
            for r in range(repeats)]


def sweep(base: RunConfig, per_class, depths, repeats: int = 1, out: str | Path = "sweep",
          scratch: bool = True, scratch_epochs: int | None = None, say=print) -> SweepResult:
    """Run the grid (finished runs in OUT are reused) and write the tables and the plot."""
    spec = config_backbone(base)
    require_head_stage(base, spec, "tltk sweep")
    if repeats < 1:
        raise TltkError(f"--repeats must be at least 1 (got {repeats})")
    out = Path(out)
    epochs = scratch_epochs or SCRATCH_STAGE.epochs
    counts = train_counts(base)
    grid = conditions(per_class, depths, repeats, scratch)
    rows = []
    for i, cond in enumerate(grid, 1):
        say(f"[{i}/{len(grid)}] {cond.name}")
        row = _run(condition_config(base, spec, cond, out, epochs), cond, say)
        size = counts if cond.per_class is None else np.minimum(counts, cond.per_class)
        rows.append({**row, "train_images": int(size.sum()),
                     "images_per_class": round(float(size.mean()), 1)})
    runs = pd.DataFrame(rows)
    table = summarise(runs)
    text = heuristic(table)
    _write(out, runs, table, text, spec)
    return SweepResult(runs, table, text, out)


def train_counts(base: RunConfig) -> np.ndarray:
    """Training images per class of the full (not subsampled) split the sweep uses."""
    from tltk import data as tltk_data

    dataset = tltk_data.load(replace(base.data, per_class=None), seed=base.seed)
    return np.bincount(dataset.splits["train"].labels, minlength=dataset.num_classes)


def _run(config: RunConfig, cond: Condition, say) -> dict:
    """Train one condition (or reuse its finished run); its best-weights accuracies."""
    from tltk.engine.run import train

    run = RunDir(config.out)
    status = (run.status() or {}).get("status")
    if status == "complete" and not _same_settings(run, config):
        raise TltkError(f"--out: {run.path} holds a finished run with other settings than "
                        "this sweep's; give the sweep a new --out, or delete that run")
    if status != "complete":
        # One run's per-epoch lines would drown the sweep's progress; they stay in its
        # run directory (history.csv), and errors still surface.
        with contextlib.redirect_stdout(io.StringIO()):
            train(config)
        keras.backend.clear_session()
    metrics = read_metrics(config.out)
    best = metrics[metrics.weights == "best"].set_index("split")
    row = {"per_class": cond.per_class or ALL, "depth": cond.depth, "repeat": cond.repeat,
           **{f"{split}_top1": best.loc[split, "top1"] for split in best.index},
           "run": config.out}
    say(f"    val top-1 {row['val_top1']:.2f}%"
        + (" (finished before)" if status == "complete" else ""))
    return row


def _same_settings(run: RunDir, config: RunConfig) -> bool:
    """Whether a finished run was trained with `config` (as resolved when it ran)."""
    saved_yaml = run.file("config.yaml").read_text()
    saved = RunConfig.from_yaml(saved_yaml)
    resolved = config.override({"data.image_size": config.data.image_size
                                or saved.data.image_size, "top_k": config.top_k or saved.top_k})
    return same_run(saved_yaml, resolved.to_yaml())


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over repeats of each (size, depth), in percent.

    Example::

        summarise(runs)[["per_class", "depth", "val_mean", "val_std", "repeats"]]
    """
    metrics = [c for c in runs.columns if c.endswith("_top1")]
    grouped = runs.groupby(["per_class", "depth"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m.removesuffix('_top1')}_{stat}" for m, stat in table.columns]
    table["repeats"] = grouped.size()
    table["images_per_class"] = grouped["images_per_class"].first()
    return table.reset_index().round(2)


def heuristic(table: pd.DataFrame) -> str:
    """The rule the sweep supports: which freeze depth to use at which size.

    At each size the recommended depth is the most frozen one whose mean lies within
    one standard deviation of the best (ties go to the cheaper setting: fewer weights
    to train). Sizes run from smallest to largest; the rule names the size from which
    the recommendation changes, or says that one depth held throughout. Transfer is
    also compared with the scratch baseline at each size.
    """
    transfer = table[table.depth != SCRATCH]
    picks = [_recommend(rows) for _, rows in transfer.groupby("per_class", sort=False)]
    picks = sorted(picks, key=lambda pick: _size_order(pick[0].per_class))
    best = pd.DataFrame([b for b, _ in picks])
    lines = [f"{_size_text(b.per_class)} per class: freeze {b.depth} ({b.val_mean:.1f}% "
             f"val), recommended freeze {r.depth}" for b, r in picks]
    changes = [r for i, (_, r) in enumerate(picks) if i and r.depth != picks[i - 1][1].depth]
    rule = f"Heuristic: {_depth_text(picks[0][1].depth)}"
    if not changes:
        rule += (f" at every size tried (up to {_size_text(picks[-1][1].per_class)} images "
                 "per class).")
    else:
        rule += f" when you have fewer than {changes[0].images_per_class:g} images per class"
        rule += "".join(f"; from {r.images_per_class:g}, {_depth_text(r.depth)}"
                        for r in changes) + "."
    return "\n".join(["Best (and recommended: most frozen within one std of the best) "
                      "freeze depth per size: " + "; ".join(lines), rule,
                      *_scratch_lines(table, best)])


def _recommend(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(the best row, the most frozen row within one std of it) of one size."""
    best = rows.loc[rows.val_mean.idxmax()]
    tolerance = 0.0 if pd.isna(best.val_std) else best.val_std
    tied = rows[rows.val_mean >= best.val_mean - tolerance]
    return best, tied.loc[tied.depth.map(_depth_order).idxmax()]


def _scratch_lines(table: pd.DataFrame, best: pd.DataFrame) -> list[str]:
    scratch = table[table.depth == SCRATCH].set_index("per_class")["val_mean"]
    return [f"{_size_text(r.per_class)} per class: transfer {r.val_mean:.1f}% vs scratch "
            f"{scratch[r.per_class]:.1f}% val" for r in best.itertuples()
            if r.per_class in scratch.index]


def _depth_text(depth) -> str:
    if depth == ALL:
        return "keep the whole backbone frozen"
    return "fine-tune every block" if depth == 0 else f"freeze the bottom {depth} blocks"


def _size_order(size) -> float:
    return float("inf") if size == ALL else int(size)


def _depth_order(depth) -> float:
    return float("inf") if depth == ALL else int(depth)


def _size_text(size) -> str:
    return "all" if size == ALL else str(size)


def _write(out: Path, runs: pd.DataFrame, table: pd.DataFrame, text: str,
           spec: BackboneSpec) -> None:
    from tltk.evaluation.plots import plot_sweep

    write_csv(out / "sweep_runs.csv", runs)
    write_csv(out / "sweep.csv", table)
    plot_sweep(table, out / "sweep.png", len(spec.blocks))
    shown = table.drop(columns=[c for c in table.columns if c.endswith("_std")])
    write_text(out / "sweep.md", "# Freeze depth x training-set size\n\n"
               + to_markdown(shown) + "\n\n" + text.replace("\n", "\n\n") + "\n")
