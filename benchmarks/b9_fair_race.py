"""B9, the fair race: `tltk train folder --budget B` against four peers fixed to their
documentation, at 2, 6 and 20 minutes of wall-clock, over training seeds, on a split
that never shaped tltk.

- Data: flowers-128 split 70/15/15 stratified with HOLDOUT_SEED (20261203, chosen when B9
  was written). tltk's defaults and the budget planner's rules were set on split seed 0
  (B6, `tltk.recipes.folder`) and training seeds 0-2; this seed was used for nothing
  before. The few-shot regime keeps 25 training images per class, the same val and test.
- Backbone: the ImageNet EfficientNet-Lite0 model file in `../shared`.
- Arms: tltk is the command a user runs, `tltk train folder --budget B` (the planner
  picks image size, stages and epochs); fastai, the Keras guide, MediaPipe Model Maker
  and the thesis are `benchmarks.peers`, fixed to their sources (its docstring), at
  160 px (B6's size for 128-px photos), MediaPipe at its model spec's 224 px.
- Isolation: every run is its own process, the arms of a round in rotating order. Each
  clock starts when the process is launched, so start-up and imports count for all.
  A peer stops at the first batch past the budget (one validated epoch at least) and is
  scored afterwards; tltk's own evaluation is inside its budget, as a user counts it.
- Shared machine check: each run's CPU seconds (RUSAGE_CHILDREN) sit beside its wall
  seconds; a run whose CPU/wall ratio falls below CPU_DROP x its arm's median is flagged
  and rerun once at the end (both records kept).
- Rungs: 2 and 6 min, three training seeds (1, 2, 3), every arm; few-shot at 2 min, one
  seed; 20 min, seed 1, tltk and the two best peers at 6 min.
- Headline: test top-1 at the best-validation weights, mean +- sample sd over seeds.

Outputs: results/b9_fair_race.json and .png (`--quick`: b9_fair_race_quick.*): every run,
the table per rung and arm, and `goals` (each of issue 23's goals with `met` and figures).
`--plan` prints the runs and the estimated wall time without running anything.

Example:
    $ python -m benchmarks b9 --plan
    $ python -m benchmarks b9 --quick
    $ python -m benchmarks b9 --budgets=60 --seeds=1 --arms=tltk,fastai --few-shot-seeds=
    $ python -m benchmarks b9 --split-seed=0 --arms=tltk --budgets=120 --long=0  # design
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks._common import RESULTS_DIR, machine_info, print_table, write_results
from benchmarks.b6_recipes import LITE0_SIZE, flowers_data, link_tree
from benchmarks.b6_recipes import Settings as SplitSettings
from benchmarks.peers import LITE0, MEDIAPIPE, PEERS, Backbone, Clock, Data

NAME = "b9_fair_race"
ARMS = ("tltk", *PEERS)
HOLDOUT_SEED = 20261203
TRAIN_SEEDS = (1, 2, 3)
FEW_SHOT_PER_CLASS = 25
ARM_SIZES = {"mediapipe": MEDIAPIPE["image_size"]}  # the others: LITE0_SIZE
CPU_DROP = 0.8
# Seconds a run takes beyond its budget on two quiet cores: a peer's four evaluations
# (val and test, final and best weights, ~650 images each at 160-224 px) and process
# exit; tltk evaluates inside its budget and may overrun it by up to 10 %.
PEER_OVERHEAD_S, TLTK_OVERRUN = 30.0, 0.10
GOAL_LEAD = 0.01  # a lead of at least 1 point ...
STRETCH_TOP1 = 0.85  # ... and 85 % test top-1 at the longest budget (stretch)


@dataclasses.dataclass(frozen=True)
class Rung:
    """One budget of the ladder. `best_peers`: run tltk and that many peers, the best
    by mean test top-1 at the rung before (None: every arm)."""

    name: str
    budget_s: float
    seeds: tuple[int, ...]
    few_shot: bool = False
    best_peers: int | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    rungs: tuple[Rung, ...]
    arms: tuple[str, ...] = ARMS
    train_per_class: int | None = None  # None: the whole training split
    few_shot_per_class: int = FEW_SHOT_PER_CLASS
    eval_per_class: int | None = None  # None: the whole val and test splits
    image_size: int | None = None  # None: each arm's own (tltk: the planner's)
    backbone: str = str(LITE0)
    split_seed: int = HOLDOUT_SEED


def ladder(budgets_s, seeds, long_s: float | None, long_peers: int, few_shot_s: float | None,
           few_shot_seeds, rung_seeds: dict | None = None,
           rung_peers: dict | None = None) -> tuple[Rung, ...]:
    """The rungs: every budget with `seeds` (or its own from `rung_seeds`, budget ->
    seeds; only tltk and the best peers of the rung before when `rung_peers`, budget ->
    count, names it), the few-shot rung, then the long one.

    Example:
        >>> [r.name for r in ladder((120, 360), (1, 2, 3), 1200, 2, 120, (1,))]
        ['2min', '6min', 'few-shot 2min', '20min']
        >>> [r.seeds for r in ladder((120, 360), (1, 2, 3), None, 0, None, (), {360: (1, 2)})]
        [(1, 2, 3), (1, 2)]
        >>> [r.best_peers for r in ladder((120, 360), (1,), None, 0, None, (), None, {360: 2})]
        [None, 2]
    """
    rungs = [Rung(label(b), b, tuple((rung_seeds or {}).get(b, seeds)),
                  best_peers=(rung_peers or {}).get(b)) for b in budgets_s]
    if few_shot_s and few_shot_seeds:
        rungs.append(Rung(f"few-shot {label(few_shot_s)}", few_shot_s, tuple(few_shot_seeds),
                          few_shot=True))
    if long_s:
        rungs.append(Rung(label(long_s), long_s, tuple(seeds[:1]), best_peers=long_peers))
    return tuple(rungs)


def label(seconds: float) -> str:
    """'2min' for 120 s, '45s' under a minute.

    Example:
        >>> label(120), label(45), label(90)
        ('2min', '45s', '1.5min')
    """
    return f"{seconds / 60:g}min" if seconds >= 60 else f"{seconds:g}s"


FULL = Settings(ladder((120, 360), TRAIN_SEEDS, 1200, 2, 120, TRAIN_SEEDS[:1]))
# Quick: every part once in about ten minutes (Lite0 at 64 px, tiny splits; a run's
# budget must hold its process's start-up, 5-30 s on two cores).
QUICK = Settings(ladder((45,), (1,), 60, 1, 45, (1,)), train_per_class=10,
                 few_shot_per_class=4, eval_per_class=4, image_size=64)


# --- planning ---------------------------------------------------------------------

def planned_runs(settings: Settings) -> list[tuple[Rung, str, int]]:
    """(rung, arm, seed) in running order; a best-peers rung names its peers by rank
    ("best peer 1"), as they are chosen once the rung before it is done."""
    runs, turn = [], 0
    for rung in settings.rungs:
        arms = settings.arms if rung.best_peers is None else (
            "tltk", *(f"best peer {i + 1}" for i in range(rung.best_peers)))
        for seed in rung.seeds:
            runs += [(rung, arm, seed) for arm in rotated(arms, turn)]
            turn += 1
    return runs


def rotated(arms: tuple[str, ...], turn: int) -> tuple[str, ...]:
    """The arms of round `turn`, each round starting one arm later.

    Example:
        >>> rotated(("a", "b", "c"), 1)
        ('b', 'c', 'a')
    """
    k = turn % len(arms)
    return arms[k:] + arms[:k]


def estimate_s(settings: Settings) -> float:
    """Wall seconds of the whole run on a quiet machine, reruns not included.

    Example:
        >>> round(estimate_s(FULL) / 3600, 1)
        3.5
    """
    return sum(rung.budget_s * (1 + TLTK_OVERRUN) if arm == "tltk"
               else rung.budget_s + PEER_OVERHEAD_S
               for rung, arm, _ in planned_runs(settings))


# --- one run ----------------------------------------------------------------------

def run_one(rung: Rung, arm: str, seed: int, settings: Settings, data: Data,
            work: Path) -> dict:
    """One arm's run in its own process, timed by the wall clock and by CPU seconds."""
    folder = work / f"{rung.name}-{arm}-{seed}".replace(" ", "_")
    folder.mkdir(parents=True)
    record = {"rung": rung.name, "budget_s": rung.budget_s, "few_shot": rung.few_shot,
              "arm": arm, "seed": seed, "load_avg_1m": os.getloadavg()[0]}
    before = _children_cpu()
    started = time.time()
    try:
        result = (_run_tltk(rung, seed, settings, data, folder, started) if arm == "tltk"
                  else _run_peer(rung, arm, seed, settings, data, folder, started))
    except (RunFailed, OSError, KeyError, ValueError) as exc:
        result = {"status": f"failed: {type(exc).__name__}: {str(exc)[-400:]}"}
    wall, cpu = time.time() - started, _children_cpu() - before
    record.update(result, wall_s=round(wall, 1), cpu_s=round(cpu, 1),
                  cpu_per_wall=round(cpu / wall, 3))
    summary = record["status"] if record["status"] != "ok" else (
        f"test {record['test_top1']:.3f} (val {record['val_top1_best']:.3f}), "
        f"{record['clock_s']:.0f} s on its clock, cpu/wall {record['cpu_per_wall']:.2f}")
    print(f"  {rung.name} {arm} seed {seed}: {summary}", flush=True)
    return record


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_peer(rung, arm, seed, settings, data, folder: Path, started: float) -> dict:
    """The peer in a child process (`--child SPEC`), which writes its result file."""
    spec = {"arm": arm, "seed": seed, "budget_s": rung.budget_s, "t0": started,
            "size": settings.image_size or ARM_SIZES.get(arm, LITE0_SIZE),
            "backbone": settings.backbone, "result": str(folder / "result.json"),
            "data": {"paths": data.paths, "class_names": data.class_names,
                     "labels": {k: v.tolist() for k, v in data.labels.items()}}}
    (folder / "spec.json").write_text(json.dumps(spec))
    _call([sys.executable, "-m", "benchmarks.b9_fair_race", "--child",
           str(folder / "spec.json")], folder)
    return json.loads((folder / "result.json").read_text())


def child(spec_path: str) -> None:
    """A peer's process: train on its clock (started at launch), score, write the result."""
    import keras

    from benchmarks.b6_recipes import run_peer

    spec = json.loads(Path(spec_path).read_text())
    clock = Clock(spec["budget_s"])
    clock.start -= time.time() - spec["t0"]  # the launch, not this line, starts the clock
    clock.start_wall = spec["t0"]
    keras.utils.set_random_seed(spec["seed"])
    raw = spec["data"]
    data = Data(raw["paths"], {k: np.asarray(v) for k, v in raw["labels"].items()},
                raw["class_names"])
    bb = Backbone("lite0", Path(spec["backbone"]), spec["size"], "block7a_")
    arm = run_peer(spec["arm"], bb, data, spec["budget_s"], clock)
    result = {"status": "ok", "clock_s": arm["wall_s"], "val_top1_best": arm["val_top1_best"],
              "test_top1": arm["test_top1"]["best"], "test_top1_final": arm["test_top1"]["final"],
              "epochs": arm["epochs"], "image_size": spec["size"], "curve": arm["curve"]}
    Path(spec["result"]).write_text(json.dumps(result))


def _run_tltk(rung, seed, settings, data, folder: Path, started: float) -> dict:
    """`tltk train folder --budget B` on the split as train/val/test folders (cold caches)."""
    tree, run = link_tree(data, folder / "data"), folder / "run"
    command = [sys.executable, "-m", "tltk.cli", "train", "folder", "--budget",
               f"{rung.budget_s:g}s", "--backbone", settings.backbone, "--data", str(tree),
               "--out", str(run), "--seed", str(seed), "--set", f"cache_dir={folder / 'cache'}"]
    if settings.image_size:
        command += ["--image-size", str(settings.image_size)]
    _call(command, folder, env={"TLTK_CACHE": str(folder / "scan")})
    return tltk_result(run, started)


def tltk_result(run: Path, started: float) -> dict:
    """Scores, epochs and plan of a finished tltk run; its clock ends at its last file."""
    with open(run / "metrics.csv") as f:  # in percent; history.csv in fractions
        top1 = {(r["weights"], r["split"]): float(r["top1"]) / 100 for r in csv.DictReader(f)}
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    config = yaml.safe_load((run / "config.yaml").read_text())
    last = max(p.stat().st_mtime for p in run.rglob("*") if p.is_file())
    return {"status": "ok", "clock_s": round(last - started, 1),
            "val_top1_best": round(max(float(r["val_top1"]) for r in history), 4),
            "test_top1": round(top1["best", "test"], 4),
            "test_top1_final": round(top1["final", "test"], 4), "epochs": len(history),
            "image_size": config["data"]["image_size"],
            "plan": (config.get("budget") or {}).get("plan"),
            "stages": {s["name"]: s["epochs"] for s in config["stages"]}}


class RunFailed(RuntimeError):
    """A run's process exited with an error; the message ends with its output's tail."""


def _call(command: list[str], folder: Path, env: dict | None = None) -> None:
    """Run a child with its output in folder/log.txt; a failure names the log's tail."""
    with open(folder / "log.txt", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})})
    if done.returncode:
        tail = (folder / "log.txt").read_text().strip().splitlines()[-3:]
        raise RunFailed(f"exit {done.returncode}: {' | '.join(tail)}")


# --- the race ---------------------------------------------------------------------

def race(settings: Settings, work: Path, log: Path | None = None) -> list[dict]:
    """Every planned run, best-peers rungs decided as they come; flagged runs rerun once.

    Each record is appended to `log` (JSON lines) as its run ends, so a race stopped
    part-way keeps what it measured (`--summarize LOG` tabulates it).
    """
    full = split(settings, few_shot=False)
    few = split(settings, few_shot=True) if any(r.few_shot for r in settings.rungs) else None
    records, turn, previous = [], 0, None
    for rung in settings.rungs:
        arms = settings.arms if rung.best_peers is None else (
            "tltk", *best_peers(records, previous, rung.best_peers))
        for seed in rung.seeds:
            for arm in rotated(arms, turn):
                records.append(run_one(rung, arm, seed, settings,
                                       few if rung.few_shot else full, work))
                _append(log, records[-1])
            turn += 1
        previous = rung.name if not rung.few_shot else previous
    return rerun_flagged(records, settings, full, few, work, log)


def _append(log: Path | None, record: dict) -> None:
    if log is not None:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


def split(settings: Settings, few_shot: bool) -> Data:
    per_class = settings.few_shot_per_class if few_shot else settings.train_per_class
    return flowers_data(SplitSettings(0, per_class, settings.eval_per_class, None, ()),
                        settings.split_seed)


def best_peers(records: list[dict], rung: str | None, count: int) -> list[str]:
    """The `count` peers with the best mean test top-1 at `rung`.

    Example:
        >>> runs = [{"rung": "6min", "arm": a, "status": "ok", "test_top1": t,
        ...          "val_top1_best": t, "clock_s": 360.0}
        ...         for a, t in [("fastai", .7), ("thesis", .8), ("mediapipe", .75)]]
        >>> best_peers(runs, "6min", 2)
        ['thesis', 'mediapipe']
    """
    means = {arm: stats["test_mean"] for arm, stats in table(records, rung).items()
             if arm != "tltk"}
    return sorted(means, key=means.get, reverse=True)[:count]


def rerun_flagged(records, settings, full: Data, few: Data | None, work: Path,
                  log: Path | None = None) -> list[dict]:
    """Flag runs whose CPU/wall fell below CPU_DROP x their arm's median; rerun each once.

    The rerun takes the flagged run's place; the flagged one stays, marked `replaced`.
    """
    flag(records)
    rungs = {r.name: r for r in settings.rungs}
    for record in [r for r in records if r.get("flagged")]:
        print(f"  rerun: {record['rung']} {record['arm']} seed {record['seed']} "
              f"(cpu/wall {record['cpu_per_wall']} against the arm's usual "
              f"{record['usual_cpu_per_wall']})", flush=True)
        rung = rungs[record["rung"]]
        again = run_one(rung, record["arm"], record["seed"], settings,
                        few if rung.few_shot else full, work / "rerun")
        record["replaced"] = True
        records.append({**again, "rerun_of_flagged": True})
        _append(log, records[-1])
    return records


def flag(records: list[dict]) -> None:
    """Mark each ok run with its arm's median CPU/wall and whether it fell well below it."""
    for arm in {r["arm"] for r in records}:
        mine = [r for r in records if r["arm"] == arm and r["status"] == "ok"]
        if not mine:
            continue
        usual = statistics.median(r["cpu_per_wall"] for r in mine)
        for r in mine:
            r["usual_cpu_per_wall"] = round(usual, 3)
            r["flagged"] = r["cpu_per_wall"] < CPU_DROP * usual


# --- summary ----------------------------------------------------------------------

def counted(records: list[dict]) -> list[dict]:
    """The runs that count: ok, and not replaced by a rerun."""
    return [r for r in records if r["status"] == "ok" and not r.get("replaced")]


def table(records: list[dict], rung: str | None) -> dict[str, dict]:
    """{arm: {n, test_mean, test_sd, val_mean, clock_mean_s, tests}} at one rung.

    Example:
        >>> runs = [{"rung": "2min", "arm": "a", "status": "ok", "test_top1": t,
        ...          "val_top1_best": t, "clock_s": 100.0} for t in (0.7, 0.8)]
        >>> table(runs, "2min")["a"]["test_mean"], table(runs, "2min")["a"]["test_sd"]
        (0.75, 0.0707)
    """
    arms: dict[str, list[dict]] = {}
    for r in counted(records):
        if r["rung"] == rung:
            arms.setdefault(r["arm"], []).append(r)
    return {arm: _stats(runs) for arm, runs in arms.items()}


def _stats(runs: list[dict]) -> dict:
    tests = [r["test_top1"] for r in runs]
    sd = round(statistics.stdev(tests), 4) if len(tests) > 1 else None
    return {"n": len(tests), "test_mean": round(statistics.fmean(tests), 4), "test_sd": sd,
            "val_mean": round(statistics.fmean(r["val_top1_best"] for r in runs), 4),
            "clock_mean_s": round(statistics.fmean(r["clock_s"] for r in runs), 1),
            "tests": tests}


def goals(records: list[dict], settings: Settings) -> dict:
    """Issue 23's goals, each with `met` and the figures it was judged on."""
    tables = {r.name: table(records, r.name) for r in settings.rungs}
    ladder_rungs = [r for r in settings.rungs if not r.few_shot]
    out = {f"lead_at_{r.name}": lead(tables, r.name, ladder_rungs) for r in ladder_rungs}
    for rung in (r for r in settings.rungs if r.few_shot):
        mine = tables[rung.name]
        peers = {a: s["test_mean"] for a, s in mine.items() if a != "tltk"}
        tltk = mine.get("tltk", {}).get("test_mean")
        out[f"few_shot_lead_at_{rung.name.split()[-1]}"] = {
            "met": tltk is not None and bool(peers) and all(tltk > m for m in peers.values()),
            "tltk_test_mean": tltk, "peer_test_means": peers}
    if ladder_rungs:
        longest = max(ladder_rungs, key=lambda r: r.budget_s).name
        value = tables[longest].get("tltk", {}).get("test_mean")
        out[f"stretch_{STRETCH_TOP1:.0%}_test_top1_at_{longest}".replace("%", "pct")] = {
            "met": value is not None and value >= STRETCH_TOP1, "tltk_test_mean": value,
            "target": STRETCH_TOP1}
    out["budget_kept_by_every_tltk_run"] = budget_kept(records)
    return out


def lead(tables: dict, rung: str, ladder_rungs: list[Rung]) -> dict:
    """tltk leads every peer by >= 1 point and by more than the larger sd of the two.

    A one-seed rung borrows each arm's sd from the nearest rung with seeds (`sd_from`).
    """
    mine = tables[rung]
    if "tltk" not in mine or len(mine) < 2:
        return {"met": False, "why": "tltk or every peer missing", "arms": mine}
    margins = {}
    for arm, stats in mine.items():
        if arm == "tltk":
            continue
        sds = [_sd(tables, rung, a, ladder_rungs) for a in ("tltk", arm)]
        margin = round(mine["tltk"]["test_mean"] - stats["test_mean"], 4)
        noise = max((s for s, _ in sds if s is not None), default=0.0)
        margins[arm] = {"margin": margin, "larger_sd": noise,
                        "sd_from": sorted({w for _, w in sds}),
                        "met": margin >= GOAL_LEAD and margin > noise}
    return {"met": all(m["met"] for m in margins.values()),
            "tltk_test_mean": mine["tltk"]["test_mean"], "tltk_test_sd": mine["tltk"]["test_sd"],
            "peers": margins}


def _sd(tables: dict, rung: str, arm: str, ladder_rungs: list[Rung]):
    """(sd, the rung it comes from): this rung's, else the nearest-budget rung's."""
    here = tables[rung][arm]["test_sd"]
    if here is not None:
        return here, rung
    budget = next(r.budget_s for r in ladder_rungs if r.name == rung)
    for other in sorted(ladder_rungs, key=lambda r: abs(math.log(r.budget_s / budget))):
        stats = tables[other.name].get(arm)
        if stats and stats["test_sd"] is not None:
            return stats["test_sd"], other.name
    return None, None


def budget_kept(records: list[dict]) -> dict:
    """Every tltk run ended (its last file written) within its budget + 10 %; a run that
    failed (say, the planner refused the budget) delivered nothing, so it misses too."""
    runs = [r for r in counted(records) if r["arm"] == "tltk"]
    failed = [r for r in records if r["arm"] == "tltk" and r["status"] != "ok"]
    ratios = [round(r["clock_s"] / r["budget_s"], 3) for r in runs]
    return {"met": bool(runs) and not failed and all(x <= 1 + TLTK_OVERRUN for x in ratios),
            "worst_clock_over_budget": max(ratios, default=None), "runs": len(runs),
            "failed": [f"{r['rung']} seed {r['seed']}: {r['status']}" for r in failed]}


def table_rows(records: list[dict], settings: Settings) -> list[dict]:
    rows = []
    for rung in settings.rungs:
        for arm, s in table(records, rung.name).items():
            sd = "" if s["test_sd"] is None else f" +- {100 * s['test_sd']:.1f}"
            rows.append({"rung": rung.name, "arm": arm, "n": s["n"],
                         "test top-1 %": f"{100 * s['test_mean']:.1f}{sd}",
                         "val top-1 %": f"{100 * s['val_mean']:.1f}",
                         "clock s": s["clock_mean_s"]})
    return rows


def plot(figures: dict, path: Path) -> None:
    """Test top-1 (mean, sd bars) against budget, a line per recipe; few-shot beside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ladder_ax, few_ax = fig.subplots(1, 2, width_ratios=(3, 1), sharey=True)
    tables, rungs = figures["table"], figures["settings"]["rungs"]
    for i, arm in enumerate(figures["settings"]["arms"]):
        for ax, few_shot in ((ladder_ax, False), (few_ax, True)):
            points = [(r["budget_s"] / 60, tables[r["name"]][arm]) for r in rungs
                      if r["few_shot"] == few_shot and arm in tables[r["name"]]]
            if not points:
                continue
            x = [p[0] * (1 + 0.02 * (i - 2)) for p in points]  # side by side, not stacked
            ax.errorbar(x, [100 * s["test_mean"] for _, s in points],
                        yerr=[100 * (s["test_sd"] or 0) for _, s in points], marker="o",
                        capsize=3, label=arm, color=f"C{i}")
    ladder_ax.set(xscale="log", xlabel="budget (minutes of wall-clock)",
                  ylabel="test top-1 % at best-val weights (mean +- sd)",
                  title="flowers-128, EfficientNet-Lite0")
    few_ax.set(xlabel="budget (minutes)",
               title=f"few-shot: {figures['settings']['few_shot_per_class']} per class")
    ladder_ax.legend(fontsize=8)
    fig.suptitle(f"B9: split seed {figures['split']['seed']}, "
                 f"{'quick' if figures['quick'] else 'full'} run")
    fig.savefig(path, dpi=120)


# --- driver -----------------------------------------------------------------------

def run(settings: Settings, log: Path | None = None) -> dict:
    """The whole race; returns the figures (nothing written but `log`'s lines)."""
    if not Path(settings.backbone).is_file():
        raise SystemExit(f"B9 needs the backbone file {settings.backbone} (../shared)")
    print(f"B9: {len(planned_runs(settings))} runs, about "
          f"{estimate_s(settings) / 60:.0f} min on a quiet machine", flush=True)
    with tempfile.TemporaryDirectory(prefix="b9-") as tmp:
        records = race(settings, Path(tmp), log)
    return summary(records, settings)


def summary(records: list[dict], settings: Settings) -> dict:
    """The figures of a race's records: split, table per rung, goals, every run."""
    full = split(settings, few_shot=False)
    return {"benchmark": NAME, "settings": dataclasses.asdict(settings),
            "split": {"seed": settings.split_seed, "fractions": [0.7, 0.15, 0.15],
                      **{k: len(v) for k, v in full.labels.items()}},
            "estimated_s": round(estimate_s(settings)),
            "table": {r.name: table(records, r.name) for r in settings.rungs},
            "goals": goals(records, settings), "runs": records, "notes": NOTES}


def read_log(log: Path) -> list[dict]:
    """A race's records from its JSON-lines log; a rerun marks the run it replaces.

    Example::

        records = read_log(Path("benchmarks/results/b9_fair_race_runs.jsonl"))
    """
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    for i, rerun in enumerate(records):
        if rerun.get("rerun_of_flagged"):
            for earlier in records[:i]:
                if (earlier["rung"], earlier["arm"], earlier["seed"]) == (
                        rerun["rung"], rerun["arm"], rerun["seed"]) and not earlier.get(
                        "rerun_of_flagged"):
                    earlier["replaced"] = True
    flag(records)
    return records


NOTES = {
    "test_top1": "test top-1 of the weights of the best validation epoch",
    "clock_s": "seconds from the process's launch to the end of training (peers) or to "
               "the last file written (tltk, whose evaluation is inside its budget)",
    "cpu_per_wall": "process CPU seconds over wall seconds; flagged below "
                    f"{CPU_DROP} x the arm's median and rerun once",
}


def parse(argv: list[str] | None) -> tuple[bool, argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny splits, short budgets")
    parser.add_argument("--plan", action="store_true",
                        help="print the runs and the estimated time; run nothing")
    parser.add_argument("--summarize", metavar="LOG",
                        help="tabulate a race's runs log (JSON lines) instead of running")
    parser.add_argument("--name", help="the results files' name (default b9_fair_race)")
    parser.add_argument("--budgets", help="comma-separated seconds of the seeded rungs")
    parser.add_argument("--seeds", help="comma-separated training seeds")
    parser.add_argument("--rung-seeds", action="append", default=[], metavar="BUDGET=SEEDS",
                        help="one budget's own seeds, e.g. 360=1,2 (repeatable)")
    parser.add_argument("--rung-peers", action="append", default=[], metavar="BUDGET=N",
                        help="at that budget, tltk and the N best peers of the rung before, "
                             "e.g. 360=2 (repeatable)")
    parser.add_argument("--long", type=float, help="seconds of the long rung (0: none)")
    parser.add_argument("--long-peers", type=int, help="peers at the long rung (default 2)")
    parser.add_argument("--few-shot-seeds", help="comma-separated; '' for no few-shot rung")
    parser.add_argument("--arms", help=f"comma-separated, from {','.join(ARMS)}")
    parser.add_argument("--backbone-file", help="a .keras model file with top_activation")
    parser.add_argument("--image-size", type=int, help="one size for every arm")
    parser.add_argument("--split-seed", type=int,
                        help=f"the flowers split's seed (default {HOLDOUT_SEED}, held out; "
                             "0 is the design split)")
    parser.add_argument("--per-class", type=int, help="training images per class")
    parser.add_argument("--eval-per-class", type=int, help="val and test images per class")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    return args.quick, args, dataclasses.replace(base, **changes(args, base))


def changes(args, base: Settings) -> dict:
    """The Settings fields the flags change (the ladder rebuilt when any of its flags)."""
    def numbers(text, kind):
        return tuple(kind(x) for x in text.split(",") if x)

    seeded = [r for r in base.rungs if r.best_peers is None and not r.few_shot]
    few = next((r for r in base.rungs if r.few_shot), None)
    long = next((r for r in base.rungs if r.best_peers is not None), None)
    budgets = numbers(args.budgets, float) if args.budgets else tuple(r.budget_s for r in seeded)
    seeds = numbers(args.seeds, int) if args.seeds else seeded[0].seeds
    few_seeds = (numbers(args.few_shot_seeds, int) if args.few_shot_seeds is not None
                 else few.seeds if few else ())
    long_s = args.long if args.long is not None else long and long.budget_s
    peers = args.long_peers if args.long_peers is not None else long and long.best_peers
    arms = tuple(args.arms.split(",")) if args.arms else base.arms
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "tltk" not in arms:
        raise SystemExit(f"--arms: unknown {unknown} or tltk missing; choose from {ARMS}")
    rung_seeds = {float(b): numbers(x, int) for b, x in
                  (item.split("=", 1) for item in args.rung_seeds)}
    rung_peers = {float(b): int(n) for b, n in (item.split("=", 1) for item in args.rung_peers)}
    fields = {"rungs": ladder(budgets, seeds, long_s, peers or 0, few and few.budget_s,
                              few_seeds, rung_seeds, rung_peers), "arms": arms,
              "backbone": args.backbone_file, "image_size": args.image_size,
              "train_per_class": args.per_class, "eval_per_class": args.eval_per_class,
              "split_seed": args.split_seed}
    return {k: v for k, v in fields.items() if v is not None}


def main(argv: list[str] | None = None) -> dict | None:
    quick, args, settings = parse(argv)
    if args.plan:
        for rung, arm, seed in planned_runs(settings):
            print(f"{rung.name:>14}  seed {seed}  {arm}")
        print(f"{len(planned_runs(settings))} runs, about {estimate_s(settings) / 3600:.1f} h "
              "on a quiet machine (reruns of flagged runs not included)")
        return None
    name = args.name or NAME + ("_quick" if quick else "")
    if args.summarize:
        figures = summary(read_log(Path(args.summarize)), settings)
    else:
        log = RESULTS_DIR / f"{name}_runs.jsonl"
        log.unlink(missing_ok=True)
        figures = run(settings, log)
    path = write_results(name, {**figures, "quick": quick, "machine": machine_info()})
    plot(figures | {"quick": quick}, path.with_suffix(".png"))
    print_table(table_rows(figures["runs"], settings))
    for goal, verdict in figures["goals"].items():
        print(f"goal {goal}: {'met' if verdict['met'] else 'not met'}")
    print(f"written {path} and {path.with_suffix('.png').name}")
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main()
