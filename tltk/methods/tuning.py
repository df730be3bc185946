"""Hyperparameter search over a recipe's head and fine-tuning settings, with keras-tuner.

`tune(config)` searches, around a recipe's config, the head's depth, width and dropout,
the first stage's learning rate, and for the later (fine-tuning) stages how many named
backbone blocks to unfreeze, their learning rate and momentum. Every trial is a tltk
run of the whole staged schedule in `OUT/trials/<trial_id>/` (config, history, best and
final models); its objective is the best validation top-1 over all its epochs
(`val_top1`, a fraction as in history.csv). Trials do not evaluate on the test split:
retrain the winner with `tltk train RECIPE --config OUT/best_config.yaml` for that.

Head settings are not part of the bottleneck feature cache's key, so every trial after
the first trains its frozen stage on the features the first one extracted. A trial runs
on one device; to search on several, run one worker per device (below).

Files under OUT:
    search.yaml        what was searched (base config, tuner, space); a rerun must match
    keras_tuner/       keras-tuner's own state: rerunning the same command continues it
    trials/<id>/       one tltk run directory per trial
    trials.csv         one row per trial: hyperparameters, val_top1, status, seconds
    best_config.yaml   the best trial's full config (out unset), for `tltk train --config`

Distributed search uses keras-tuner's chief/worker mechanism: run the same command with
`KERASTUNER_TUNER_ID=chief` (serves the oracle, writes the results) and with
`KERASTUNER_TUNER_ID=tuner1`, `tuner2`, ... (run trials), all with
`KERASTUNER_ORACLE_IP` / `KERASTUNER_ORACLE_PORT` set to the chief's address and the
same OUT on a shared file system.

Example::

    from tltk.recipes import folder
    cfg = folder.config().override({"data.path": "photos/", "weights": "mnv2.h5"})
    result = tune(cfg, tuner="bayesian", max_trials=20, out="runs/search")
    result.trials[["trial", "val_top1", "finetune_blocks"]].head(3)
    result.best_config.stages[1].lr
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import keras_tuner
import pandas as pd
import yaml

from tltk.config import RunConfig
from tltk.engine import Context, end_run, prepare, run_stage
from tltk.engine.callbacks import NumericalFault
from tltk.engine.runtime import op_determinism, precision_policy
from tltk.errors import TltkError
from tltk.fileio import save_model, write_csv, write_text
from tltk.log import log
from tltk.models.backbones import (
    check_image_size,
    config_backbone,
    resolve_unfreeze,
)
from tltk.models.spec import BackboneSpec
from tltk.registry import Registry
from tltk.rundir import RunDir

OBJECTIVE = "val_top1"
TUNERS = Registry("--tuner", {"random": keras_tuner.RandomSearch,
                              "bayesian": keras_tuner.BayesianOptimization,
                              "hyperband": keras_tuner.Hyperband})
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")


@dataclass
class SearchSpace:
    """The ranges searched. Learning rates are sampled on a log scale.

    `finetune_blocks` counts named blocks from the top; its upper end is capped at the
    backbone's number of blocks (`None`: all of them). The fine-tuning rates span SGD's
    usual range and whole-network Adam's.

    Example:
        >>> space = SearchSpace(finetune_blocks=(1, 2), head_units=(128, 256))
        >>> space.finetune_blocks, space.head_layers  # the rest keeps its defaults
        ((1, 2), (0, 2))
    """

    head_layers: tuple = (0, 2)
    head_units: tuple = (64, 128, 256, 512)
    head_dropout: tuple = (0.0, 0.6)
    stage1_lr: tuple = (1e-4, 1e-2)
    finetune_blocks: tuple = (1, None)
    finetune_lr: tuple = (1e-6, 1e-2)
    finetune_momentum: tuple = (0.5, 0.99)


@dataclass
class TuneResult:
    """What `tune` returns: the search folder, its trials table and the best config.

    Example::

        result = tune(cfg, max_trials=3, out="runs/s")
        result.trials.iloc[0]["val_top1"], result.best_config.head.units  # -> (0.621, 128)
    """

    out: Path
    trials: pd.DataFrame
    best_config: RunConfig | None
    ran: list = field(default_factory=list)  # trial ids this process ran


def trial_config(base: RunConfig, spec: BackboneSpec, space: SearchSpace, hp) -> RunConfig:
    """`base` with one trial's values; declares the hyperparameters on `hp` as it reads them.

    The first stage gets `stage1_lr`. Later stages get `finetune_lr` (their `lr_steps`
    scaled by the same factor, so a step schedule keeps its shape), `finetune_momentum`
    when their optimizer has momentum, and `finetune_blocks` when they unfreeze blocks
    of a pretrained backbone. The result keeps `base.out`.

    Example::

        from tltk.recipes import dogs
        hp = keras_tuner.HyperParameters()  # no trial yet: every value is its default
        trial_config(dogs.config(), get_backbone("vgg19"), SearchSpace(), hp).head
        # HeadConfig(layers=0, units=64, dropout=0.0)
    """
    head = {"layers": hp.Int("head_layers", *space.head_layers),
            "units": hp.Choice("head_units", list(space.head_units)),
            # Rounded: a stepped Float carries float noise (0.30000000000000004).
            "dropout": round(hp.Float("head_dropout", *space.head_dropout, step=0.1), 2)}
    stages = [asdict(stage) for stage in base.stages]  # deep copies: base stays as it is
    stages[0]["lr"] = hp.Float("stage1_lr", *space.stage1_lr, sampling="log")
    later = stages[1:]
    if later:
        lr = hp.Float("finetune_lr", *space.finetune_lr, sampling="log")
        momentum = (hp.Float("finetune_momentum", *space.finetune_momentum)
                    if any(s["optimizer"] in MOMENTUM_OPTIMIZERS for s in later) else None)
        unfreezing = [s for s in later if spec.pretrained and resolve_unfreeze(spec, s["unfreeze"])]
        if unfreezing:
            low, high = space.finetune_blocks
            high = len(spec.blocks) if high is None else min(high, len(spec.blocks))
            blocks = hp.Int("finetune_blocks", min(low, high), high)
            for stage in unfreezing:
                stage["unfreeze"] = blocks
        for stage in later:
            scale = lr / stage["lr"]
            stage["lr_steps"] = [[epoch, rate * scale] for epoch, rate in stage["lr_steps"]]
            stage["lr"] = lr
            if momentum is not None and stage["optimizer"] in MOMENTUM_OPTIMIZERS:
                stage["momentum"] = momentum
    return RunConfig.from_dict({**base.to_dict(), "head": head, "stages": stages})


def scale_epochs(config: RunConfig, budget: int) -> RunConfig:
    """Hyperband's budget: `budget` of the schedule's total epochs, spread over its stages.

    Example:
        >>> from tltk.config import StageConfig
        >>> cfg = RunConfig(stages=[StageConfig("head", epochs=10), StageConfig("ft", epochs=4)])
        >>> [s.epochs for s in scale_epochs(cfg, 7).stages]
        [5, 2]
    """
    total = sum(s.epochs for s in config.stages)
    # A skipped (0-epoch) stage stays skipped.
    stages = [{**asdict(s), "epochs": s.epochs and max(1, round(s.epochs * budget / total))}
              for s in config.stages]
    return RunConfig.from_dict({**config.to_dict(), "stages": stages})


class TransferHyperModel(keras_tuner.HyperModel):
    """One search space around a base config; a trial is a tltk run of its stages.

    `build(hp)` prepares the trial's run (data, classifier, run directory) and returns
    the classifier; `fit(hp, model)` runs the staged schedule on it and returns
    `{"val_top1": best validation top-1}`. Set `trial_id` before `build`.

    Example::

        hypermodel = TransferHyperModel(cfg, "runs/search")
        hypermodel.trial_id = "00"
        hypermodel.fit(hp, hypermodel.build(hp))  # -> {'val_top1': 0.83}
    """

    def __init__(self, base: RunConfig, out: str | Path, space: SearchSpace | None = None,
                 say=log):
        super().__init__(name=f"{base.recipe}-{base.backbone}")
        self.base, self.out, self.space, self.say = base, Path(out), space or SearchSpace(), say
        self.spec = config_backbone(base)
        self.trial_id, self.tuner_id = None, "tuner0"
        self._ctx: Context | None = None

    def declare_hyperparameters(self, hp) -> None:
        self.trial_config(hp)

    def trial_config(self, hp) -> RunConfig:
        """The trial's config at the schedule's full length, `out` unset."""
        config = trial_config(self.base, self.spec, self.space, hp)
        return RunConfig.from_dict({**config.to_dict(), "out": None})

    def trial_dir(self, trial_id: str) -> Path:
        return self.out / "trials" / str(trial_id)

    def build(self, hp) -> keras.Model:
        config = self.trial_config(hp)
        if "tuner/epochs" in hp.values:
            config = scale_epochs(config, hp.values["tuner/epochs"])
        config = RunConfig.from_dict({**config.to_dict(),
                                      "out": str(self.trial_dir(self.trial_id))})
        config.validate()
        # The same seed gives every trial the same backbone initialisation, so even a
        # randomly initialised backbone keys the same cached features.
        keras.utils.set_random_seed(config.seed)
        self._ctx = prepare(config, self.spec, self.say)
        self._ctx.run.set_status("running", trial=self.trial_id, tuner=self.tuner_id)
        return self._ctx.model

    def fit(self, hp, model, *args, **kwargs) -> dict:
        ctx, self._ctx = self._ctx, None  # hold no reference once the trial ends
        if ctx is None or ctx.model is not model:
            raise ValueError("fit() takes the model of the latest build() call")
        try:
            for stage in ctx.config.stages:
                run_stage(ctx, stage)
            save_model(ctx.model, ctx.run.file("final.keras"))
        except BaseException as exc:
            ctx.run.set_status("failed", error=f"{type(exc).__name__}: {exc}"[:500])
            ctx.run.close()  # a retry of this trial in this process must lock it again
            raise
        end_run(ctx)
        return {OBJECTIVE: ctx.trackers.saver.best}

    def completed(self, trial_id: str) -> dict | None:
        """The result of a trial whose run finished before the search could record it."""
        status = RunDir(self.trial_dir(trial_id)).status() or {}
        if status.get("status") != "complete" or "best" not in status:
            return None
        return {OBJECTIVE: status["best"][OBJECTIVE]}


class _TltkTrials:
    """Mixed into keras-tuner's tuners: a trial runs tltk's stages, not one `model.fit`."""

    def _populate_initial_space(self):
        # The space has no conditional hyperparameters, so declaring it is enough;
        # keras-tuner's default would also build() a model, i.e. start a whole run.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def run_trial(self, trial, *args, **kwargs):
        hypermodel, hp = self.hypermodel, trial.hyperparameters
        _release_memory()
        result = hypermodel.completed(trial.trial_id)
        if result is None:
            hypermodel.trial_id, hypermodel.tuner_id = trial.trial_id, self.tuner_id
            try:
                result = hypermodel.fit(hp, hypermodel.build(hp))
            except NumericalFault as exc:  # these settings diverged: the next trial may not
                raise keras_tuner.errors.FailedTrialError(str(exc)) from exc
            except TltkError as exc:
                # A user error would fail every trial alike: stop and report it once.
                raise keras_tuner.errors.FatalError(str(exc)) from exc
            self.ran.append(trial.trial_id)
        hypermodel.say(f"trial {trial.trial_id}: best val top-1 {100 * result[OBJECTIVE]:.2f}%")
        return result

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        _release_memory()
        if not is_search_worker():
            write_results(self)


def _release_memory() -> None:
    """Drop the previous trial's graph and models before the next one is built."""
    keras.backend.clear_session()
    gc.collect()


def _tuner_class(name: str):
    base = TUNERS.get(name)
    return type(f"Tltk{base.__name__}", (_TltkTrials, base), {})


def make_tuner(hypermodel: TransferHyperModel, tuner: str = "random", max_trials: int = 10,
               overwrite: bool = False):
    """A keras-tuner tuner of kind `tuner` (random | bayesian | hyperband) over `hypermodel`.

    keras-tuner keeps its state in `OUT/keras_tuner`; with `overwrite=False` an existing
    search there is continued. Hyperband's budget is the schedule's total epochs (each
    round retrains from scratch with more epochs; it does not warm-start) and at most
    `max_trials` trials run.

    Example::

        tuner = make_tuner(TransferHyperModel(cfg, "runs/s"), "hyperband", max_trials=30)
    """
    cls = _tuner_class(tuner)
    base = hypermodel.base
    # keras-tuner reads seed 0 as "pick one at random"; shift it to keep searches repeatable.
    common = {"hypermodel": hypermodel, "objective": keras_tuner.Objective(OBJECTIVE, "max"),
              "seed": base.seed + 1, "directory": str(hypermodel.out),
              "project_name": "keras_tuner", "overwrite": overwrite}
    state = hypermodel.out / "keras_tuner"
    try:
        if tuner == "hyperband":
            instance = cls(max_epochs=sum(s.epochs for s in base.stages), **common)
            instance.oracle.max_trials = max_trials
        else:
            instance = cls(max_trials=max_trials, **common)
    except Exception as exc:  # noqa: BLE001 - whatever keras-tuner fails on in its files
        if overwrite or not state.is_dir():
            raise
        text = str(exc).strip()
        reason = text.splitlines()[0][:120] if text else type(exc).__name__
        raise TltkError(f"{state}: the saved search state is damaged ({reason}); pass "
                        "--overwrite to start the search afresh (or delete the folder)") from None
    instance.ran = []
    return instance


def is_search_chief() -> bool:
    """True in the process that serves the oracle of a distributed search.

    Example:
        >>> from unittest import mock
        >>> chief = {"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "10.0.0.5"}
        >>> with mock.patch.dict(os.environ, chief):
        ...     is_search_chief(), is_search_worker()
        (True, False)
    """
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" in os.environ.get(
        "KERASTUNER_TUNER_ID", "")


def is_search_worker() -> bool:
    """True in a process that runs trials for a distributed search's chief.

    Example:
        >>> from unittest import mock
        >>> worker = {"KERASTUNER_TUNER_ID": "tuner1", "KERASTUNER_ORACLE_IP": "10.0.0.5"}
        >>> with mock.patch.dict(os.environ, worker):
        ...     is_search_worker()
        True
    """
    return "KERASTUNER_ORACLE_IP" in os.environ and not is_search_chief()


def check_distributed_env() -> None:
    """A distributed search needs all three KERASTUNER_* variables (the oracle's address
    and this process's tuner id).

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"KERASTUNER_ORACLE_IP": "10.0.0.5"}, clear=True):
        ...     check_distributed_env()
        Traceback (most recent call last):
        tltk.errors.TltkError: distributed search: KERASTUNER_ORACLE_IP set but ...
    """
    names = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
    given = [n for n in names if os.environ.get(n)]
    if set(given) & set(names[1:]) and len(given) < len(names):
        missing = ", ".join(n for n in names if n not in given)
        raise TltkError(f"distributed search: {', '.join(given)} set but {missing} not; set "
                        "all three (TUNER_ID 'chief' on the chief, e.g. 'tuner1' on workers)")


def tune(config: RunConfig, tuner: str = "random", max_trials: int = 10,
         out: str | Path | None = None, space: SearchSpace | None = None,
         overwrite: bool = False, say=log) -> TuneResult:
    """Search hyperparameters around `config`; see the module docstring for OUT's files.

    Rerunning with the same arguments continues the search (completed trials are not
    rerun); `overwrite=True` starts it afresh. Under `KERASTUNER_*` variables this
    process is the chief (serves the oracle, then writes the results) or a worker.

    Example::

        result = tune(flowers.config(), tuner="random", max_trials=3, out="runs/s")
        result.best_config.to_yaml() == Path("runs/s/best_config.yaml").read_text()  # -> True
    """
    _tuner_class(tuner)
    check_distributed_env()
    if max_trials < 1:
        raise TltkError(f"--max-trials must be a positive integer (got {max_trials})")
    config.validate()
    if config.strategy != "auto":
        raise TltkError(f"--strategy {config.strategy}: a search runs each trial on one device; "
                        "run one search worker per device instead (KERASTUNER_* variables)")
    spec = config_backbone(config)
    if config.data.image_size:
        check_image_size(spec, config.data.image_size)
    out = Path(out or f"runs/tune-{config.recipe}-{spec.name}")
    space = space or SearchSpace()
    if not is_search_worker():
        _check_same_search(out, config, tuner, space, overwrite)
    hypermodel = TransferHyperModel(config, out, space, say=say)
    with precision_policy(config.precision), op_determinism(config.deterministic):
        # Workers must not delete the shared folder the chief and other workers use.
        searcher = make_tuner(hypermodel, tuner, max_trials, overwrite and not is_search_worker())
        try:
            searcher.search(verbose=0)  # tltk prints its own per-epoch and per-trial lines
        except keras_tuner.errors.FatalError as exc:
            if isinstance(exc.__cause__, TltkError):
                raise exc.__cause__ from None
            raise
    if is_search_worker():
        hypermodel.say(f"worker {searcher.tuner_id} ran trial(s) "
                       f"{', '.join(searcher.ran) or 'none'}; the chief writes the results")
        return TuneResult(out, pd.DataFrame(), None, searcher.ran)
    trials, best = write_results(searcher)
    if best is not None:
        hypermodel.say(f"best trial {trials.iloc[0]['trial']}: val top-1 "
                       f"{100 * trials.iloc[0][OBJECTIVE]:.2f}%; config: "
                       f"{out / 'best_config.yaml'}")
    return TuneResult(out, trials, best, searcher.ran)



def _check_same_search(out: Path, config: RunConfig, tuner: str, space: SearchSpace,
                       overwrite: bool) -> None:
    """Write OUT/search.yaml, refusing to continue a different search in the same OUT."""
    record = yaml.safe_dump({"tuner": tuner, "space": {k: list(v) for k, v in
                                                       asdict(space).items()},
                             "config": config.to_dict()}, sort_keys=False)
    path = out / "search.yaml"
    if path.is_file() and not overwrite and path.read_bytes() != record.encode():
        raise TltkError(f"--out: {out} holds a search with a different config, tuner or "
                        f"space (or a damaged {path.name}); choose another --out or pass "
                        "--overwrite")
    write_text(path, record)


def trials_table(searcher) -> pd.DataFrame:
    """One row per trial, best first: trial, status, val_top1, hyperparameters, tuner,
    seconds and run_dir.

    Example::

        trials_table(searcher)[["trial", "status", "val_top1"]].iloc[0].tolist()
        # -> ['1', 'completed', 0.621]
    """
    rows = []
    for trial in searcher.oracle.trials.values():
        values = dict(trial.hyperparameters.values)
        budget = values.pop("tuner/epochs", None)
        # Six significant digits: readable, and a stepped Float's noise (0.30000000000000004)
        # goes; best_config.yaml keeps the exact values.
        values = {k: float(f"{v:.6g}") if isinstance(v, float) else v
                  for k, v in values.items() if not k.startswith("tuner/")}
        run_dir = searcher.hypermodel.trial_dir(trial.trial_id)
        status = RunDir(run_dir).status() or {}
        seconds = status.get("finished", math.nan) - status.get("started", math.nan)
        rows.append({"trial": trial.trial_id, "status": str(trial.status).lower(),
                     OBJECTIVE: trial.score if trial.score is not None else math.nan,
                     **values, **({"budget_epochs": budget} if budget else {}),
                     "tuner": status.get("tuner"), "seconds": round(seconds, 1),
                     "run_dir": str(run_dir)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values([OBJECTIVE, "trial"], ascending=[False, True],
                             na_position="last").reset_index(drop=True)


def write_results(searcher) -> tuple[pd.DataFrame, RunConfig | None]:
    """Write OUT/trials.csv and OUT/best_config.yaml; return the table and best config.

    Example::

        table, best = write_results(searcher)  # best is None until a trial completes
    """
    out = searcher.hypermodel.out
    table = trials_table(searcher)
    write_csv(out / "trials.csv", table)
    done = [t for t in searcher.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not done:
        return table, None
    best = searcher.hypermodel.trial_config(done[0].hyperparameters)
    write_text(out / "best_config.yaml", best.to_yaml())
    return table, best
