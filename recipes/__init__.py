"""`import recipes` is `tltk.recipes`: kept so notebooks that import `recipes` work.

Example:
    >>> import recipes, tltk.recipes
    >>> recipes is tltk.recipes and recipes.demo is tltk.recipes.demo
    True
"""

import importlib
import sys

import tltk.recipes as _recipes

# Alias every recipe module, so `recipes.demo` and `tltk.recipes.demo` are one module.
for _name in _recipes.RECIPES.names():
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"tltk.recipes.{_name}")
sys.modules[__name__] = _recipes
