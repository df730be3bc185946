"""`import recipes` is `tltk.recipes`: kept so notebooks that import `recipes` work.

Example:
    >>> import recipes, tltk.recipes
    >>> recipes is tltk.recipes and recipes.demo is tltk.recipes.demo
    True
    >>> import recipes.dogs_thesis
    >>> recipes.dogs_thesis.config is tltk.recipes.get_recipe("dogs-thesis")
    True
"""

import pkgutil
import sys

import tltk.recipes as _recipes

# Alias every recipe module, so `recipes.demo` and `tltk.recipes.demo` are one module.
for _module in pkgutil.iter_modules(_recipes.__path__):
    sys.modules[f"{__name__}.{_module.name}"] = sys.modules[f"tltk.recipes.{_module.name}"]
sys.modules[__name__] = _recipes
