"""Recipes: modules that declare a run's data, head, augmentation and stages as data.

Each recipe module registers its `config()` under the name users type, as keras-hub
model folders register their presets and timm's `@register_model` does:

    @RECIPES.register("flowers")
    def config() -> RunConfig:
        ...  # docstring: "tf_flowers 70/15/15, VGG19, folder's stages, top-2"

The first line of the function's docstring is the recipe's summary (`tltk recipes`). Every
module of this package is imported below, so a new recipe joins the registry, the
CLI, and the test matrix (tests/test_matrix.py) by being a module here.
`run(name, **overrides)` trains any of them.

Example::

    from tltk.recipes import run
    result = run("flowers", backbone="mobilenetv2", data={"path": "photos/"})
    result.metrics
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

from tltk.errors import TltkError
from tltk.registry import Registry

# Recipe name (`tltk train NAME`) -> its `config()`; filled as the modules import.
RECIPES = Registry("RECIPE")


def get_recipe(name: str) -> Callable:
    """The `config` function registered as `name`; a one-line error suggests close names.

    Example:
        >>> get_recipe("demo")().recipe
        'demo'
    """
    return RECIPES.get(name)


def summary(name: str) -> str:
    """The recipe's one-line summary: the first line of its `config` docstring."""
    return inspect.getdoc(get_recipe(name)).splitlines()[0]


def run(name: str, base=None, **overrides):
    """Train recipe `name` (or `base`, a config built from it) with keyword overrides.

    Nested dicts address sub-configs (`data={"path": "x"}`); `epochs_head` and
    `epochs_finetune` set the epochs of the first and of every later stage. Returns a
    `tltk.engine.RunResult`.

    Example::

        run("demo", epochs_finetune=1, out="runs/demo")
    """
    from tltk.engine import train

    return train(run_config(base or get_recipe(name)(), dict(overrides)))


def expand_overrides(overrides: dict) -> dict:
    """Turn `run()` keyword overrides into dotted config keys.

    Nested dicts address sub-configs: `data={"path": "x"}` -> `{"data.path": "x"}`;
    `epochs_head` / `epochs_finetune` set the epochs of the frozen / tuning stages.
    """
    out = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and key != "schedule_args":
            out.update({f"{key}.{k}": v for k, v in expand_overrides(value).items()})
        else:
            out[key] = value
    return out


def set_stage_epochs(config, epochs_head=None, epochs_finetune=None):
    """Set the epochs of the first stage and of every later stage (None: keep)."""
    for i, stage in enumerate(config.stages):
        epochs = epochs_head if i == 0 else epochs_finetune
        if epochs is not None:
            stage.epochs = epochs
    return config


def base_config(recipe: str | None, config_file: str | None = None):
    """The config a command starts from: `--config FILE` if given, else RECIPE's.

    Example:
        >>> base_config("demo").recipe
        'demo'
    """
    from tltk.config import RunConfig

    if recipe is not None:
        get_recipe(recipe)  # an unknown RECIPE fails even when --config is given
    if config_file:
        return RunConfig.load(config_file)
    if recipe is None:
        raise TltkError("RECIPE: missing; give a recipe (see `tltk recipes`) or --config FILE")
    return get_recipe(recipe)()


def configure(base, overrides: dict | None = None, sets=(), epochs_head=None,
              epochs_finetune=None, cache_features=None, mixup=None):
    """A command's config: `base`, then dotted `overrides`, `--set` pairs, stage epochs,
    `cache_features` (on the stages whose backbone is frozen) and `mixup` (every stage).

    Example:
        >>> cfg = configure(base_config("demo"), {"seed": 3}, ["batch_size=8"], epochs_head=2)
        >>> cfg.seed, cfg.batch_size, cfg.stages[0].epochs
        (3, 8, 2)
    """
    from tltk.config import parse_set_pairs
    from tltk.models.backbones import config_backbone, resolve_unfreeze

    config = base.override(overrides or {}).override(parse_set_pairs(sets))
    config = set_stage_epochs(config, epochs_head, epochs_finetune)
    if cache_features is not None:
        spec = config_backbone(config)
        for stage in config.stages:
            if resolve_unfreeze(spec, stage.unfreeze) == []:
                stage.cache_features = cache_features
    if mixup is not None:
        for stage in config.stages:
            stage.mixup = mixup
    return config


def run_config(base, overrides: dict):
    """Apply `run(**overrides)` to a recipe's base config.

    `epochs_head` sets the first stage's epochs and `epochs_finetune` every later one's.
    """
    head = overrides.pop("epochs_head", None)
    finetune = overrides.pop("epochs_finetune", None)
    return set_stage_epochs(base.override(expand_overrides(overrides)), head, finetune)


def recipe_table() -> str:
    """One line per recipe, for `tltk recipes`."""
    width = max(map(len, RECIPES)) + 2
    return "\n".join(f"{name:<{width}}{summary(name)}" for name in RECIPES)


# Importing each module registers its recipe (the modules import this one: keep last).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
