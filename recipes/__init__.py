"""Recipes: importable modules that declare a run's data, head, augmentation and
stages as data, each exposing `config()` and `run(**overrides)`.

Example:
    >>> from recipes import flowers
    >>> result = flowers.run(backbone="mobilenetv2", data={"path": "photos/"})
    >>> result.metrics
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tltk.errors import unknown_name

# Module names under `recipes`, keyed by the name users type (`tltk train NAME`).
RECIPES = {"demo": "demo", "folder": "folder", "flowers": "flowers", "dogs": "dogs",
           "baseline": "baseline"}


def get_recipe(name: str) -> ModuleType:
    """The recipe module registered as `name`; a one-line error suggests close names."""
    if name not in RECIPES:
        raise unknown_name("RECIPE", name, RECIPES)
    return importlib.import_module(f"recipes.{RECIPES[name]}")


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


def run_config(base, overrides: dict):
    """Apply `run(**overrides)` to a recipe's base config.

    `epochs_head` sets the first stage's epochs and `epochs_finetune` every later one's.
    """
    head = overrides.pop("epochs_head", None)
    finetune = overrides.pop("epochs_finetune", None)
    return set_stage_epochs(base.override(expand_overrides(overrides)), head, finetune)


def train_recipe(base, overrides: dict):
    """Train `base` with `run(**overrides)` applied; returns a `tltk.training.RunResult`."""
    from tltk.training import train

    return train(run_config(base, dict(overrides)))


def recipe_table() -> str:
    """One line per recipe, for `tltk recipes`."""
    lines = []
    for name in RECIPES:
        module = get_recipe(name)
        lines.append(f"{name:<10}{module.SUMMARY}")
    return "\n".join(lines)
