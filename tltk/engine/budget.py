"""`tltk train RECIPE --budget DURATION`: plan the run to fit a wall-clock budget.

The budget runs from the command's start to its last file written. Before training a
few batches are timed on this machine with the dry run's timing (`tltk.engine.dryrun`):
the frozen backbone's forward pass per image at one size, and one save of the
classifier. The cost ratios measured once on the design split (flowers-128 split seed 0,
EfficientNet-Lite0; `benchmarks/results/b10_budget_design.json`, copied into `DESIGN`)
turn them into the cost of every part at every size in SIZES. The rules then pick:

1. at each size, the fine-tuning mode: the whole network on images when at least
   WHOLE_MIN_EPOCHS fit, else the top block on cached activations of 4, 2 or 1
   augmented views when at least TOP_MIN_EPOCHS fit, else none; the head epochs on
   cached features: the recipe's, fewer when even they do not fit;
2. among the plans whose head gets at least HEAD_SATURATED_EPOCHS (B12: the head's val
   top-1 stops rising by then), the one the design evidence expects best: the head's
   val top-1 at its size (B12's head probe) plus its mode's gain over the head
   (MODE_GAIN), ties within HEAD_TIE to the smaller (cheaper) size, then to the mode
   that trains more. So a larger image for the head can beat a fine-tuning mode that
   only a smaller one affords (B12: 160 px gives the head 1.9 points over 128 px; the
   cached top block gave it 0-0.8 in B9's first run);
3. the epochs, over which the schedule is stretched (one-cycle for the whole network).

Every plan leaves time for the final evaluation. Without fine-tuning it is short: the
backbone never changed, so the heads classify cached features and only test is
extracted (`tltk.engine.run.shared_features`), which is what lets a 2-minute budget
afford 160 px.

The plan is printed, applied to the config (image size, stages) and saved in
config.yaml under `budget`, so `--resume` continues it unchanged. A `Deadline` callback
stops training if the run falls behind its plan, so that the final evaluation still
ends within the budget plus 10 %.

Example::

    config = plan_budget(folder_config, parse_duration("6m"), started=time.time())
    config.budget["plan"]["finetune"]  # 'whole'
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from tltk.config import RunConfig
from tltk.engine import runtime
from tltk.errors import TltkError

SIZES = (128, 160, 192, 224)
WHOLE_MIN_EPOCHS = 5
TOP_MIN_EPOCHS = 10
TOP_VIEWS = (4, 2, 1)
HEAD_TIE = 0.005  # head-probe differences under half a point are noise (B12: sd 0.1-0.8)
HEAD_SATURATED_EPOCHS = 13  # B12: the head's best val by 1,200 steps (13 epochs) at every size
# What each fine-tuning mode adds to the head's val top-1 on the design split: the whole
# network, `folder`'s one-cycle over 5 epochs, 3.1-5.7 points (B6; the lower end); the
# cached top block, 0 and 0.8 points in B9's first run (which scored on split seed 0).
MODE_GAIN = {"none": 0.0, "top": 0.004, "whole": 0.031}
# Batches timed through the backbone (after a warm-up), their median kept: B9's first
# held-out race timed 3 and one run, measuring 60 % slow, refused a budget it fitted.
TIMED_BATCHES = 6
# The share of head epochs that improve val, each saving best.keras (on the design
# split, 2 minutes at 128 px: epochs 1, 3, 5 and 7 of 19).
IMPROVING = 0.3
SAFETY = 0.95  # plan to end at 95 % of the budget; the Deadline guards the rest
# The fine-tuning stages the planner writes: `folder`'s whole-network one-cycle and the
# cached top block of B6's `ft_top1_cached` arm, as measured on the design split.
WHOLE_STAGE = {"unfreeze": "all", "optimizer": "adam", "lr": 1e-4, "schedule": "onecycle",
               "cache_features": False, "epochs": 1}
# From results/b10_budget_design.json ("derived") and, for the head's val top-1 per
# size, results/b12_head_design.json (tests/test_budget.py checks they match): per-image
# costs as ratios to the frozen backbone's forward pass, fixed costs (first, tracing
# calls; an epoch's own overhead in fit; loading a saved classifier; the report) as
# ratios to that forward pass's first call,
# the forward pass's growth with the image side, and the head stage's best val top-1
# per size (`folder`'s head, 20 epochs, mean of 3 seeds).
DESIGN = {
    "ratio_to_forward": {"classifier": 1.105, "head_step": 0.041, "whole_step": 4.486,
                         "top_cut": 1.008, "top_step": 0.289},
    "side_exponent": 1.94, "reference_size": 192,
    "ratio_to_trace": {"trace_head": 0.606, "trace_whole": 8.474, "trace_top": 1.185,
                       "epoch_overhead": 0.075, "load": 0.917, "report": 4.003},
    "head_val_top1": {128: 0.7355, 160: 0.754, 192: 0.7514, 224: 0.7596},
}
MODES = ("none", "top", "whole")  # in the order of how much they train
# keras.applications families that B11 (results/b11_precision*.json) measured faster in
# mixed_bfloat16 on a CPU with AMX bf16 units, a whole shortened `folder` run included,
# with accuracy inside the seeds' noise: VGG16 (a training step 4.2x float32's, a whole
# run in 0.26 of the time, val top-1 +3.2 points, sd 3-4). VGG19 is VGG16 with three more
# convolutions. Not ResNet50 (a step 1.18x, a whole run 0.97 of the time: no gain worth a
# precision change) nor the depthwise MobileNetV2 and EfficientNetB0 (a step 0.78x, 0.67x).
BF16_APPS = ("VGG16", "VGG19")


def top_stage(views: int) -> dict:
    """The cached top-block stage with `views` augmented views of every training image."""
    return {"unfreeze": 1, "optimizer": "adam", "lr": 1e-4, "schedule": "constant",
            "cache_features": True, "feature_views": views, "epochs": 1}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90s`, `10m`, `1.5h` or `600` (seconds).

    Example:
        >>> parse_duration("10m"), parse_duration("90s"), parse_duration("1.5h")
        (600.0, 90.0, 5400.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise TltkError(f"--budget: cannot read '{text}'; give a duration such as 90s, "
                        "10m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Measured:
    """What was timed on this machine before planning (seconds), and the split sizes."""

    size: int  # the image size the forward pass was timed at
    forward: float  # per image, the frozen backbone to its pooled features
    trace: float  # its first call (tracing the graph): fixed costs scale with it
    save: float  # one save of the classifier (every epoch commits one)
    build: float  # loading the data and building the classifier once
    elapsed: float  # since the command started, when the plan is made
    train: int
    val: int
    test: int
    # A head epoch on cached features, per image (its fit's overhead included), and its
    # first, tracing fit; None: from the design ratios. Pooled features have one size
    # whatever the image's, so neither grows with it.
    head_step: float | None = None
    head_trace: float | None = None
    precision: str = "float32"  # the policy all of it was timed under

    def forward_at(self, size: int) -> float:
        return self.forward * (size / self.size) ** DESIGN["side_exponent"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The planned run. Seconds count from the command's start."""

    budget_s: float
    image_size: int
    head_epochs: int
    finetune: str  # none | top | whole
    finetune_epochs: int
    views: int  # cached augmented views of the top mode (0 otherwise)
    train_until_s: float  # the Deadline: training stops here at the latest
    estimated_s: float  # the last file written, as planned
    precision: str = "float32"

    def describe(self) -> str:
        """One line a person reads.

        Example:
            >>> Plan(120, 160, 20, "top", 14, 2, 100.0, 110.0).describe()
            'plan for 2.0 min at 160 px: head 20 epochs on cached features, then the top \
block 14 epochs on cached activations (2 views); ends at about 1.8 min'
        """
        tuning = {"none": "no fine-tuning",
                  "top": f"the top block {self.finetune_epochs} epochs on cached "
                         f"activations ({self.views} views)",
                  "whole": f"the whole network {self.finetune_epochs} epochs on images "
                           "(one-cycle)"}[self.finetune]
        where = "" if self.precision == "float32" else f" in {self.precision}"
        return (f"plan for {_minutes(self.budget_s)} at {self.image_size} px{where}: head "
                f"{self.head_epochs} epochs on cached features, then {tuning}; ends at about "
                f"{_minutes(self.estimated_s)}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def make_plan(budget_s: float, measured: Measured, head_epochs: int,
              sizes: tuple[int, ...] = SIZES) -> Plan:
    """The plan the design evidence expects best (`expected_top1`) among those whose
    head gets its epochs, ties to the smaller size, then to more training; with as many
    epochs as fit. When no size gives the head its epochs: the most head epochs.

    Example::

        make_plan(360, Measured(160, 0.01, 1.0, 0.5, 5.0, 8.0, 3019, 649, 649), 20).finetune
        # 'whole'
    """
    plans = [_plan_at(size, budget_s, measured, head_epochs) for size in sizes]
    full = [p for p in plans if p.head_epochs >= min(head_epochs, HEAD_SATURATED_EPOCHS)]
    if not full:
        return max(plans, key=lambda p: (p.head_epochs, -p.image_size))
    best = max(expected_top1(p) for p in full)
    return min((p for p in full if expected_top1(p) >= best - HEAD_TIE),
               key=lambda p: (p.image_size, -MODES.index(p.finetune)))


def expected_top1(plan: Plan) -> float:
    """The val top-1 the design evidence expects of `plan`: its size's head probe plus
    its fine-tuning mode's gain (0 for a size the probe never measured).

    Example:
        >>> round(expected_top1(Plan(360, 160, 20, "top", 12, 2, 300.0, 340.0)), 4)
        0.758
    """
    return DESIGN["head_val_top1"].get(plan.image_size, 0.0) + MODE_GAIN[plan.finetune]


def _plan_at(size: int, budget_s: float, m: Measured, head_epochs: int) -> Plan:
    """The plan at one image size (head epochs 0: the features' extraction and the
    evaluation do not fit). When they fit but a whole head epoch does not, one is
    planned: the Deadline stops it in time, and a head trained for part of an epoch
    beats no model (B9: timing on a busy moment once refused a budget that fitted)."""
    cost = _Costs(m, size)
    left = budget_s * SAFETY - m.elapsed - m.build
    head_fixed = cost.extract(m.train, 1.0) + cost.trace("trace_head")
    room = left - cost.evaluation("none") - head_fixed
    epochs = 0 if room < 0 else max(1, min(head_epochs, math.floor(room / cost.head_epoch)))
    head = head_fixed + epochs * cost.head_epoch
    mode, tuning, views = "none", 0, 0
    if epochs == head_epochs:  # fine-tuning changes the backbone: evaluated on images
        mode, tuning, views = _finetune(cost, left - head - cost.evaluation("tuned"))
    spent = {"none": 0.0, "whole": cost.whole(tuning), "top": cost.top(views, tuning)}[mode]
    evaluation = cost.evaluation(mode)
    return Plan(budget_s, size, epochs, mode, tuning, views,
                round(budget_s * SAFETY - evaluation, 1),
                round(m.elapsed + m.build + head + spent + evaluation, 1), m.precision)


def _finetune(cost: _Costs, left: float) -> tuple[str, int, int]:
    """(mode, epochs, views) of the fine-tuning `left` seconds afford."""
    whole = math.floor((left - cost.whole(0)) / cost.whole_epoch)
    if whole >= WHOLE_MIN_EPOCHS:
        return "whole", whole, 0
    for views in TOP_VIEWS:
        epochs = math.floor((left - cost.top(views, 0)) / cost.top_epoch)
        if epochs >= TOP_MIN_EPOCHS:
            return "top", epochs, views
    return "none", 0, 0


class _Costs:
    """Seconds of each part at one size: per-image costs from the timed forward pass,
    fixed ones from its timed first call, both through the design ratios."""

    def __init__(self, m: Measured, size: int):
        per_image = {k: m.forward_at(size) * r for k, r in DESIGN["ratio_to_forward"].items()}
        self.m, self.forward, self.per_image = m, m.forward_at(size), per_image
        # Fixed costs scale with the slower of the two timed first calls: a small model's
        # forward pass traces in milliseconds, but Keras's own set-up of a fit (its
        # tf.data pipeline, train and val functions) does not shrink with the model, and
        # the head's first fit measures it (a 2-conv backbone: 0.05 s against 1.0 s, and
        # its first whole-network epoch took 12 s, not the 0.4 s the forward call implied).
        self.first_call = max(m.trace, m.head_trace or 0.0)
        epoch = m.save + self.trace("epoch_overhead")  # every epoch commits a checkpoint
        # A head epoch commits the head's weights alone (a fraction of a second); only
        # an epoch that improves val saves the classifier (best.keras).
        head = (m.head_step if m.head_step is not None
                else per_image["head_step"] + self.trace("epoch_overhead") / (m.train + m.val))
        self.head_epoch = IMPROVING * m.save + (m.train + m.val) * head
        self.whole_epoch = epoch + m.train * per_image["whole_step"] + m.val * per_image[
            "classifier"]
        self.top_epoch = epoch + (m.train + m.val) * per_image["top_step"]

    def evaluation(self, mode: str) -> float:
        """Best and final weights on val and test, then saving final, loading best and
        the report (B10's `finish_costs`). After a frozen backbone (`mode` none) the
        heads classify val's cached features and test's, extracted once
        (`tltk.engine.run.shared_features`); after fine-tuning each model classifies
        the images, each traced once."""
        m, per_image = self.m, self.per_image
        end = m.save + self.trace("load") + self.trace("report")
        if mode == "none":
            heads = 2 * (m.val + m.test) * per_image["head_step"] + 2 * self.trace("trace_head")
            return m.test * self.forward + self.first_call + heads + end
        return 2 * (m.val + m.test) * per_image["classifier"] + 2 * self.first_call + end

    def trace(self, name: str) -> float:
        if name == "trace_head" and self.m.head_trace is not None:
            return self.m.head_trace
        return DESIGN["ratio_to_trace"][name] * self.first_call

    def extract(self, images: float, ratio: float) -> float:
        """Caching `images` training images and the val split, `ratio` of a forward pass."""
        return (images + self.m.val) * self.forward * ratio + self.first_call

    def whole(self, epochs: int) -> float:
        return self.trace("trace_whole") + epochs * self.whole_epoch

    def top(self, views: int, epochs: int) -> float:
        extract = self.extract(views * self.m.train, DESIGN["ratio_to_forward"]["top_cut"])
        return extract + self.trace("trace_top") + epochs * self.top_epoch


# --- applying the plan -------------------------------------------------------------

def apply_plan(config: RunConfig, plan: Plan, measured: Measured) -> RunConfig:
    """`config` with the plan's image size and stages, the plan kept under `budget`."""
    head, *middle, last = _stages(config)
    tuning = {"none": {"epochs": 0}, "whole": {**WHOLE_STAGE},
              "top": top_stage(plan.views)}[plan.finetune]
    if plan.finetune != "none":
        tuning["epochs"] = plan.finetune_epochs
    stages = [dataclasses.replace(head, epochs=plan.head_epochs),
              *(dataclasses.replace(s, epochs=0) for s in middle),
              dataclasses.replace(last, **tuning)]
    record = {"seconds": plan.budget_s, "plan": dataclasses.asdict(plan),
              "measured": dataclasses.asdict(measured)}
    return dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                image_size=plan.image_size),
                               stages=stages, budget=record, precision=plan.precision)


def _stages(config: RunConfig) -> list:
    stages = config.stages
    if len(stages) < 2 or stages[0].unfreeze not in (0, "0", None, []):
        raise TltkError(f"--budget: recipe '{config.recipe}' does not start with a frozen "
                        "head stage followed by fine-tuning; use a transfer recipe such as "
                        "folder")
    return stages


def plan_budget(config: RunConfig, budget_s: float, started: float, say=print,
                pick_precision: bool = False) -> RunConfig:
    """Time this machine, plan the run to end within `budget_s` of `started` (a
    `time.time()`), print the plan and return the config that runs it; with
    `pick_precision` (no precision given), in the one `choose_precision` picks."""
    from tltk.models.backbones import config_backbone

    spec = config_backbone(config)
    if pick_precision:
        config = config.override({"precision": choose_precision(spec)})
    fixed = config.data.image_size
    sizes = (fixed,) if fixed else (tuple(s for s in SIZES if s >= spec.min_size)
                                    or (spec.min_size,))
    head_epochs = _stages(config)[0].epochs  # a recipe without a head stage fails first
    measured = measure(config, spec, fixed or max(DESIGN["reference_size"], spec.min_size),
                       started)
    plan = make_plan(budget_s, measured, head_epochs, sizes)
    say(plan.describe())
    say(f"  timed on this machine: {1000 * measured.forward:.1f} ms an image through the "
        f"backbone at {measured.size} px ({measured.trace:.1f} s its first call), "
        f"{measured.save:.1f} s a save, {measured.elapsed:.0f} s before planning")
    if plan.head_epochs == 0:
        raise TltkError(f"--budget: {_minutes(budget_s)} does not fit caching the features "
                        f"and evaluating here (start-up and planning took "
                        f"{measured.elapsed:.0f} s); give a longer budget")
    return apply_plan(config, plan, measured)


def choose_precision(spec, flags: frozenset[str] | None = None) -> str:
    """mixed_bfloat16 where B11 measured a whole run faster in it at no cost in accuracy
    (a keras.applications family in BF16_APPS, on a CPU with AMX bf16 units and no GPU);
    float32 otherwise, model files included (they keep the policy they were saved with).

    Example:
        >>> from tltk.models.backbones import get_backbone
        >>> choose_precision(get_backbone("vgg19"), flags=frozenset({"amx_bf16"}))
        'mixed_bfloat16'
        >>> choose_precision(get_backbone("mobilenetv2"), flags=frozenset({"amx_bf16"}))
        'float32'
    """
    import tensorflow as tf

    flags = runtime.cpu_flags() if flags is None else flags
    if spec.app in BF16_APPS and "amx_bf16" in flags and not tf.config.list_physical_devices(
            "GPU"):
        return "mixed_bfloat16"
    return "float32"


def measure(config: RunConfig, spec, size: int, started: float) -> Measured:
    """Build the classifier at `size` as the run will (in its precision) and time it:
    forward passes (the dry run's timing), one save and a head epoch."""
    with runtime.precision_policy(config.precision):
        return _measure(config, spec, size, started)


def _measure(config: RunConfig, spec, size: int, started: float) -> Measured:
    from tltk.engine.dryrun import seconds_per_call, timed_batches
    from tltk.engine.run import prepare
    from tltk.engine.stage import plan_stage
    from tltk.fileio import save_model
    from tltk.log import silent

    t0 = time.time()
    ctx = prepare(config.override({"data.image_size": size}), spec, say=silent, dry_run=True)
    build = time.time() - t0
    head = plan_stage(ctx, ctx.config.stages[0], strict=False)
    lower = head.lower or ctx.model
    batches = timed_batches(ctx, "train", TIMED_BATCHES + 1)
    t1 = time.time()
    lower.predict_on_batch(batches[0][0])  # the first call traces the graph
    trace = time.time() - t1
    per_batch = seconds_per_call(lambda b: lower.predict_on_batch(b[0]), batches)
    timed = batches[1:] or batches  # as seconds_per_call times them
    images = sum(int(b[0].shape[0]) for b in timed) / len(timed)
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.time()
        save_model(ctx.model, Path(tmp) / "model.keras")
        save = time.time() - t2
    splits = ctx.dataset.splits
    head_step, head_trace = time_head(head, ctx.config.batch_size, len(splits["train"]),
                                      len(splits["val"]), ctx.dataset.num_classes)
    keras.backend.clear_session()  # the run builds its own classifier
    return Measured(size, per_batch / images, round(trace, 3), round(save, 3), round(build, 2),
                    round(time.time() - started, 2), len(splits["train"]), len(splits["val"]),
                    len(splits.get("test", ())), head_step, head_trace, config.precision)


HEAD_TIMED_BATCHES = 128  # at most; fit's per-epoch overhead must spread as in a real epoch


def time_head(plan, batch_size: int, train: int, val: int,
              classes: int) -> tuple[float | None, float | None]:
    """(seconds per image of a head epoch, seconds of its first fit), timed by fitting
    the head on random features of the cache's shape: one epoch of the training split's
    batches (HEAD_TIMED_BATCHES at most) validating on the val split's share of them,
    twice, the faster kept, after a one-batch fit that traces both. (None, None) when
    the head stage trains on images (its cache is over the memory budget).

    Example::

        time_head(plan_stage(ctx, ctx.config.stages[0]), 32, 3018, 649, 5)  # (0.0002, 1.4)
    """
    if plan.cached != "pooled":
        return None, None
    rows = min(train, HEAD_TIMED_BATCHES * batch_size)
    held = max(1, round(rows * val / train))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, *plan.lower.output_shape[1:])).astype("float32")
    y = rng.integers(0, classes, rows)
    if plan.one_hot:
        y = keras.utils.to_categorical(y, classes)
    plan.compile(math.ceil(rows / batch_size))
    t0 = time.perf_counter()
    plan.fitted.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, verbose=0,
                    validation_data=(x[:batch_size], y[:batch_size]))
    trace = time.perf_counter() - t0
    epochs = []
    for _ in range(2):  # the faster of two: a busy moment only ever slows an epoch down
        t1 = time.perf_counter()
        plan.fitted.fit(x, y, batch_size=batch_size, verbose=0,
                        validation_data=(x[:held], y[:held]))
        epochs.append(time.perf_counter() - t1)
    return round(min(epochs) / (rows + held), 7), round(trace, 3)


class Deadline(keras.callbacks.Callback):
    """Stops training at `deadline` (a `time.time()`), whatever the stage: a run that
    falls behind its plan still leaves the time its final evaluation needs.

    Example::

        tltk.engine.train(config, callbacks=[Deadline(started + plan.train_until_s)])
    """

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline, self.stage = deadline, None

    def _check(self) -> None:
        if time.time() >= self.deadline:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()


def command_started() -> float:
    """When this process started (a `time.time()`): the budget counts from there.

    Linux reads it from /proc (start-up and imports count); elsewhere, from the first
    import of this module.
    """
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()
