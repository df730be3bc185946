"""`import recipes` is `tltk.recipes`: kept so notebooks that import `recipes` work.

Example:
    >>> import recipes, tltk.recipes
    >>> recipes is tltk.recipes and recipes.demo is tltk.recipes.demo
    True
    >>> import recipes.dogs_thesis
    >>> recipes.dogs_thesis is tltk.recipes.get_recipe("dogs-thesis")
    True
"""

import importlib
import sys

import tltk.recipes as _recipes

# Alias every recipe module, so `recipes.demo` and `tltk.recipes.demo` are one module.
for _name in _recipes.RECIPES.names():
    _module = _recipes.RECIPES.get(_name)  # the module name: flowers-thesis -> flowers_thesis
    sys.modules[f"{__name__}.{_module}"] = importlib.import_module(f"tltk.recipes.{_module}")
sys.modules[__name__] = _recipes
