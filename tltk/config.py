"""One typed config for a run, shared by the CLI, recipes, notebooks and the tuner.

A `RunConfig` is pure data: it round-trips through YAML (`to_yaml` / `from_yaml`)
and every run saves its fully resolved config as `config.yaml`.

Example:
    >>> cfg = RunConfig(recipe="folder", backbone="mobilenetv2")
    >>> cfg = cfg.override({"data.image_size": 160, "batch_size": 64})
    >>> RunConfig.from_yaml(cfg.to_yaml()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tltk.errors import TltkError, did_you_mean, unknown_name

# A stage's `unfreeze`: how many named backbone blocks, counted from the top, are
# trainable (0 = frozen backbone), "all" for the whole backbone, or explicit block names.
Unfreeze = int | str | list
BATCHNORM_MODES = ("frozen", "train")
TTA_MODES = ("none", "flip", "flip+affine")
AUGMENT_POLICIES = ("affine", "randaugment")
# `tltk export --format`; a `--out` ending in .keras or .tflite names its format.
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
# `tltk export --quantize` (TFLite) and `--int8-io` (a full-integer model's input/output).
QUANTIZE = ("none", "dynamic", "float16", "int8")
INT8_IO = ("uint8", "int8")
# A run's saved models (`--weights` of predict, export, ...) and `tltk predict --format`.
RUN_WEIGHTS = ("best", "final", "ema")
PREDICT_FORMATS = ("table", "json", "csv")

# Each set of named choices, declared once: the config checks values against these,
# the CLI builds its `click.Choice`s from them (`choices`), and the registries that
# implement them (optimizers, preprocessing modes) are tested to cover exactly these.
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
Resize = Literal["stretch", "crop", "pad"]
Preprocess = Literal["caffe", "torch", "tf", "none"]
Optimizer = Literal["adam", "sgd", "rmsprop", "adamw"]
Schedule = Literal["constant", "step", "cosine", "sgdr", "onecycle"]

# Arguments each schedule accepts in `schedule_args`, with their defaults (see
# tltk.optim.schedules). fastai's fit_one_cycle defaults: start at lr/25, peak at a
# quarter, end at lr/1e5.
SCHEDULE_ARGS = {
    "constant": {},
    "step": {},
    "cosine": {"min_lr": 0.0},
    "sgdr": {"period": 10, "t_mul": 2.0, "m_mul": 1.0, "min_lr": 0.0},
    "onecycle": {"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e5},
}


def choices(literal) -> tuple[str, ...]:
    """The names a `Literal` choice type allows.

    Example:
        >>> choices(Resize)
        ('stretch', 'crop', 'pad')
    """
    return typing.get_args(literal)


@dataclass
class DataConfig:
    """Which images to use and how to split and size them."""

    dataset: str = "demo"
    path: str | None = None  # image folder, or a tfds data_dir for tfds sources
    image_size: int | None = None  # None: the backbone's default input size
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split: str = "default"  # dataset-specific protocol, e.g. dogs: default | official
    per_class: int | None = None  # subsample the training split to this many per class
    resize: Resize = "stretch"  # stretch | crop (keep aspect, centre crop) | pad
    class_weight: str | None = None  # None | balanced
    cache_images: bool = True  # keep decoded, resized images in memory when they fit
    # Seed of the train/val/test split, fixed by default and independent of --seed, so
    # runs that differ only in seed (repeats, ensembles) hold the same val and test
    # images. None: follow the run's seed (older configs saved it that way).
    split_seed: int | None = 0
    # Keep duplicates (equal bytes or pixels, near-identical thumbnails; see
    # tltk.data.duplicates) in one split when tltk splits a folder itself. A config.yaml
    # without this key predates it and keeps its ungrouped split (`RunConfig.from_dict`).
    group_duplicates: bool = True
    # dogs: also evaluate on `v2`, ImageNetV2's dog classes (needs imagenet_v2 prepared;
    # CLI --no-v2 turns it off).
    v2: bool = True


@dataclass
class BackboneOptions:
    """How to read a model-file or `hub:` backbone (see `tltk.models.modelfile`).

    `cut`: the layer whose output is the feature map (None: the last 4-D one);
    `blocks`: block names, overriding the inferred ones; `preprocess`: caffe | torch |
    tf | none, for a model that does not begin with its own rescaling (any backbone).
    """

    cut: str | None = None
    blocks: list | None = None
    preprocess: Preprocess | None = None


@dataclass
class HeadConfig:
    """The head grafted onto the backbone (see `tltk.models.heads`)."""

    layers: int = 1
    units: int = 256
    dropout: float = 0.5
    # BatchNormalization on the pooled features and after each dense layer. On the
    # ImageNet Lite0's flowers-128 features it cost 2 points of val top-1 (72.0 % against
    # 74.1 %, 3 seeds): it rescales every feature to unit variance, so the head overfits
    # weak ones. The `folder` recipe turns it off; the thesis recipes keep it.
    batchnorm: bool = True


@dataclass
class AugmentConfig:
    """ImageDataGenerator-style augmentation parameters (see `tltk.data.augment`)."""

    rotation_range: float = 10.0
    width_shift_range: float = 0.1
    height_shift_range: float = 0.1
    shear_range: float = 0.05
    zoom_range: float = 0.1
    horizontal_flip: bool = True
    vertical_flip: bool = False
    fill_mode: str = "reflect"


@dataclass
class StageConfig:
    """One training stage, declared as data; a stage of 0 epochs is skipped.

    `lr_steps` lists `[epoch, lr]` pairs: from that (stage-local, 0-based) epoch on,
    the learning rate is `lr`, e.g. `[[25, 0.001]]` after 25 epochs at `lr`.
    `cache_features=None` means: cache bottleneck features when the backbone is frozen.
    `feature_views` is how many views per training image are cached: the plain image,
    plus augmented views when it is above 1 (and `augment` is on). One view is the
    default: on flowers-128, four views cost four times the extraction for no gain.
    """

    name: str
    epochs: int
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    lr_steps: list = field(default_factory=list)
    unfreeze: Unfreeze = 0
    augment: bool = True
    cache_features: bool | None = None
    feature_views: int = 1
    # Learning-rate schedule and per-block rates (see tltk.optim.schedules and
    # tltk.optim.discriminative):
    # schedule: constant | step | cosine | sgdr; schedule_args e.g. {"min_lr": 1e-5} or
    # {"period": 5, "t_mul": 2.0, "m_mul": 1.0}; block i from the top trains at
    # lr * block_lr_decay**i and the new head at lr * head_lr_mult.
    schedule: Schedule = "constant"
    warmup_epochs: int = 0
    schedule_args: dict = field(default_factory=dict)
    block_lr_decay: float | None = None
    head_lr_mult: float = 1.0
    # Clip the global gradient norm: SGD on BatchNorm-heavy backbones whose BN is
    # frozen can take one huge step and never recover; a clip keeps the first steps sane.
    clipnorm: float | None = None
    # Mixup alpha on the training stream (0: off); labels become mixed one-hot vectors
    # and the loss categorical cross-entropy (see tltk.data.mixup).
    mixup: float = 0.0
    # Label smoothing epsilon: targets become (1 - eps) * one-hot + eps / classes, and the
    # loss categorical cross-entropy (Keras's sparse form has no label_smoothing).
    label_smoothing: float = 0.0
    # BatchNorm of the trainable blocks: frozen (inference mode, ImageNet statistics) or
    # train (batch statistics, moving statistics updated, as fastai's fine_tune does).
    # Only trainable blocks are affected: on a frozen backbone it changes nothing, so a
    # sweep or a tuner may vary `unfreeze` down to 0 with it set.
    batchnorm: str = "frozen"
    # Exponential moving average of the trained weights (Keras's optimizer `use_ema`),
    # with this decay, e.g. 0.999; evaluated as the `ema` weights. None: off.
    ema: float | None = None

    def validate(self) -> None:
        """Reject a stage that cannot run, naming the field and the fix."""
        if self.epochs < 0:
            raise TltkError(f"stage '{self.name}': epochs must be 0 (skip the stage) or a "
                            f"positive integer (got {self.epochs}); set "
                            "--epochs-head/--epochs-finetune")
        _check_choice(Optimizer, self.optimizer, f"stages.{self.name}.optimizer")
        if self.lr <= 0:
            raise TltkError(f"stage '{self.name}': lr must be positive (got {self.lr})")
        if self.mixup < 0:
            raise TltkError(f"stage '{self.name}': --mixup must be 0 (off) or a positive "
                            f"alpha such as 0.2 (got {self.mixup:g})")
        self._validate_regularisers()
        self.schedule_args_checked()  # a bad schedule fails now, not after a stage

    def effective_schedule(self) -> str:
        """The schedule run: a `constant` stage with `lr_steps` is a `step` stage."""
        if self.schedule == "constant" and self.lr_steps:
            return "step"
        return self.schedule

    def schedule_args_checked(self) -> dict:
        """The schedule's arguments (defaults filled in) after checking every schedule
        field against the others; raises naming the field and the fix.

        Example:
            >>> StageConfig("ft", epochs=4, schedule="cosine").schedule_args_checked()
            {'min_lr': 0.0}
        """
        name, where = self.effective_schedule(), f"stages.{self.name}"
        _check_choice(Schedule, name, f"{where}.schedule")
        allowed = SCHEDULE_ARGS[name]
        unknown = sorted(set(self.schedule_args) - set(allowed))
        if unknown:
            raise TltkError(f"{where}.schedule_args: unknown key(s) {unknown} for schedule "
                            f"'{name}'; valid keys: {', '.join(allowed) or 'none'}")
        args = {**allowed, **self.schedule_args}
        self._check_warmup(name, where)
        if self.lr_steps and name != "step":
            raise TltkError(f"{where}.lr_steps: only the step schedule uses lr_steps; "
                            f"remove them or set schedule: step (got schedule: {name})")
        if name == "step":
            self.lr_steps_checked()
        if name == "onecycle" and not (0 < args["pct_start"] < 1 and args["div_factor"] >= 1
                                       and args["final_div_factor"] >= 1):
            raise TltkError(f"{where}.schedule_args: onecycle needs 0 < pct_start < 1, "
                            f"div_factor >= 1 and final_div_factor >= 1 (got {args})")
        if name == "sgdr" and (args["period"] <= 0 or args["t_mul"] <= 0):
            raise TltkError(f"{where}.schedule_args: sgdr needs period > 0 and t_mul > 0")
        if "min_lr" in args and not 0 <= args["min_lr"] <= self.lr:
            raise TltkError(f"{where}.schedule_args.min_lr: must lie in [0, lr={self.lr}], "
                            f"got {args['min_lr']}")
        return args

    def _check_warmup(self, name: str, where: str) -> None:
        if self.warmup_epochs < 0 or (self.warmup_epochs and self.warmup_epochs >= self.epochs
                                      and name in ("cosine", "sgdr")):
            raise TltkError(f"{where}.warmup_epochs: {self.warmup_epochs} leaves no epochs for "
                            f"the {name} schedule of a {self.epochs}-epoch stage; lower it")
        if self.warmup_epochs and name == "onecycle":
            raise TltkError(f"{where}.warmup_epochs: the onecycle schedule warms up by itself "
                            "(schedule_args.pct_start); set warmup_epochs: 0")

    def lr_steps_checked(self) -> tuple[list[int], list[float]]:
        """`lr_steps` as (epochs, rates), checked: the step schedule needs them."""
        where = f"stages.{self.name}.lr_steps"
        if not self.lr_steps:
            raise TltkError(f"{where}: the step schedule needs [epoch, lr] pairs, "
                            "e.g. lr_steps: [[25, 0.001]]")
        try:
            epochs = [int(epoch) for epoch, _ in self.lr_steps]
            values = [float(lr) for _, lr in self.lr_steps]
        except (TypeError, ValueError):
            raise TltkError(f"{where}: expected [epoch, lr] pairs, got {self.lr_steps!r}") \
                from None
        if any(b <= a for a, b in zip(epochs, epochs[1:])) or epochs[0] < 1:
            raise TltkError(f"{where}: epochs must be increasing and at least 1, got {epochs}")
        return epochs, values

    def _validate_regularisers(self) -> None:
        where = f"stage '{self.name}'"
        if not 0 <= self.label_smoothing < 1:
            raise TltkError(f"{where}: label_smoothing must lie in [0, 1), e.g. 0.1 "
                            f"(got {self.label_smoothing:g})")
        if self.batchnorm not in BATCHNORM_MODES:
            raise TltkError(f"{where}: batchnorm must be {' or '.join(BATCHNORM_MODES)} "
                            f"(got {self.batchnorm!r})")
        if self.ema is not None and not 0 < self.ema < 1:
            raise TltkError(f"{where}: ema is a decay in (0, 1) such as 0.999, or unset "
                            f"(got {self.ema:g})")


@dataclass
class RunConfig:
    """Everything that defines a run. Saved as `config.yaml` in the run directory."""

    recipe: str = "custom"
    backbone: str = "mobilenetv2"
    # imagenet | none | path to a weights file; a model-file or hub backbone's run
    # records "own" (the weights it carries).
    weights: str = "imagenet"
    backbone_options: BackboneOptions = field(default_factory=BackboneOptions)
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stages: list = field(default_factory=list)  # list[StageConfig]
    batch_size: int = 32
    seed: int = 0
    top_k: int | None = None  # None: 5, or 2 when there are 5 classes or fewer
    precision: Precision = "float32"
    jit: bool = False
    # Deterministic TensorFlow kernels: with the same seed, reruns are bit-identical.
    deterministic: bool = False
    strategy: str = "auto"  # auto | mirrored | multiworker (see tltk.engine.runtime)
    out: str | None = None
    cache_dir: str | None = None  # bottleneck feature cache; None: ~/.cache/tltk
    # Test-time augmentation at evaluation: extra `<weights>+tta` rows averaging the
    # softmax over views (none | flip | flip+affine; see tltk.evaluation.metrics).
    tta: str = "none"
    # Training augmentation: affine (the IDG-style `augment` parameters) or randaugment
    # (keras.layers.RandAugment, 2 ops at strength `randaugment_factor`).
    augment_policy: str = "affine"
    randaugment_factor: float = 0.5
    # Memory (GB) cached features may take, transient batches included; None: 70 % of
    # the memory available when the stage starts (see tltk.engine.features.cache_budget).
    cache_budget_gb: float | None = None
    # `tltk train --budget`: the budget (seconds), its plan and what was timed to make it
    # (tltk.engine.budget); the plan's sizes and epochs are in `data` and `stages`.
    budget: dict | None = None

    def __post_init__(self):
        self.stages = [s if isinstance(s, StageConfig) else _build(StageConfig, s, _where(s))
                       for s in self.stages]

    # --- conversion -------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        section = data.get("data") if isinstance(data, dict) else None
        if isinstance(section, dict) and "group_duplicates" not in section:
            # Written before duplicate grouping: its run resumes on the split it began with.
            data = {**data, "data": {**section, "group_duplicates": False}}
        return _build(cls, data, "config")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "config") -> RunConfig:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise TltkError(f"{source}: malformed YAML{where}; fix the file's syntax") from None
        if not isinstance(data, dict):
            raise TltkError(f"{source}: expected a mapping of config keys at the top level")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise TltkError(f"--config: file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise TltkError(f"{path}: cannot be read ({reason}); fix or replace the "
                            "file") from None
        try:
            return cls.from_yaml(text, source=str(path))
        except TltkError as exc:  # a bad key or value: say which file holds it
            if str(path) in str(exc):
                raise
            raise TltkError(f"{path}: {exc}") from None

    # --- validation -------------------------------------------------------
    def validate(self) -> None:
        """Reject settings that cannot work, naming the argument and the fix.

        Example:
            >>> RunConfig(batch_size=0).validate()
            Traceback (most recent call last):
            ...
            tltk.errors.TltkError: --batch-size must be a positive integer
        """
        checks = [(self.batch_size > 0, "--batch-size must be a positive integer"),
                  (self.data.image_size is None or self.data.image_size > 0,
                   "--image-size must be a positive integer"),
                  (bool(self.stages), "the config has no stages; add at least one"),
                  (self.precision in choices(Precision),
                   f"--precision must be {' or '.join(choices(Precision))}"),
                  (self.data.resize in choices(Resize),
                   f"--resize must be {' or '.join(choices(Resize))}"),
                  (self.data.class_weight in (None, "balanced"),
                   "--class-weight must be 'balanced' or unset"),
                  (self.data.per_class is None or self.data.per_class > 0,
                   "--per-class must be a positive integer (or unset for all images)"),
                  (self.tta in TTA_MODES, f"tta must be one of {', '.join(TTA_MODES)}"),
                  (self.augment_policy in AUGMENT_POLICIES,
                   f"augment_policy must be {' or '.join(AUGMENT_POLICIES)}"),
                  (0 <= self.randaugment_factor <= 1,
                   "randaugment_factor must lie in [0, 1], e.g. 0.5"),
                  (self.cache_budget_gb is None or self.cache_budget_gb > 0,
                   "cache_budget_gb must be a positive number of GB (or unset)")]
        for ok, message in checks:
            if not ok:
                raise TltkError(message)
        for stage in self.stages:
            stage.validate()
        if not any(stage.epochs for stage in self.stages):
            raise TltkError("every stage has 0 epochs, so nothing would train; give at least "
                            "one stage epochs (--epochs-head / --epochs-finetune)")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise TltkError(f"stage names must be unique (got {names}); rename the repeated one")
        from tltk.engine.runtime import STRATEGIES

        STRATEGIES.get(self.strategy)

    # --- overrides --------------------------------------------------------
    def override(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with dotted keys replaced, e.g. {"data.image_size": 160}.

        `stages.<name>.<field>` addresses a stage by name; `None` values are ignored.
        """
        data = self.to_dict()
        for key, value in overrides.items():
            if value is not None:
                _set_path(data, key.split("."), value, key)
        return RunConfig.from_dict(data)

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise TltkError(f"no stage named '{name}'; stages: {[s.name for s in self.stages]}")


def _set_path(data: dict, parts: list[str], value, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(data, list):  # stages addressed by name
        matches = [item for item in data if item.get("name") == head]
        if not matches:
            names = [item.get("name") for item in data]
            raise TltkError(f"{key}: no stage named '{head}'{did_you_mean(head, names) or ';'} "
                            f"stages: {', '.join(names)}")
        target = matches[0]
    elif head not in data:
        raise TltkError(f"{key}: unknown config key '{head}'{did_you_mean(head, data) or ';'} "
                        f"valid keys there: {', '.join(sorted(data))}")
    else:
        target = data
    if not rest:
        target[head] = value
    else:
        _set_path(target if isinstance(data, list) else data[head], rest, value, key)


def _build(cls, data, where: str):
    """Build dataclass `cls` from a plain dict, checking keys and basic types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise TltkError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TltkError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TltkError(f"{where}: {exc}") from None


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise TltkError(f"{where}: a value is required")
    for option in options:
        if typing.get_origin(option) is Literal:
            _check_choice(option, value, where)
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool, list, dict) and type(value) is option:
            return value
        if option is typing.Any:
            return value
    if str in options and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    names = "/".join(getattr(o, "__name__", str(o)) for o in options)
    raise TltkError(f"{where}: expected {names}, got {value!r}")


def _where(stage) -> str:
    """`stages.NAME` for a stage given as a mapping with a name, else `stages`."""
    name = stage.get("name") if isinstance(stage, dict) else None
    return f"stages.{name}" if isinstance(name, str) else "stages"


def _check_choice(literal, value, where: str) -> None:
    if value not in choices(literal):
        raise unknown_name(where, str(value), choices(literal))


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def parse_set_pairs(pairs) -> dict:
    """`KEY=VALUE` strings as dotted overrides; values are read as YAML (1e-4, true).

    Example:
        >>> parse_set_pairs(["stages.finetune.lr=1e-4", "jit=true"])
        {'stages.finetune.lr': 0.0001, 'jit': True}
    """
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise TltkError(f"--set: expected KEY=VALUE such as "
                            f"stages.finetune.schedule=cosine, got '{pair}'")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise TltkError(f"--set {key}: cannot read the value '{text}'") from None
        out[key.strip()] = _number(value) if isinstance(value, str) else value
    return out


def _number(text: str):
    # YAML 1.1 reads 1e-4 (no dot) as a string; learning rates are written that way.
    try:
        return float(text)
    except ValueError:
        return text
