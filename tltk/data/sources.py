"""The registry of data sources: name -> `loader(cfg: DataConfig, split_seed) -> Dataset`.

Each source module (`demo`, `folder`, `tfds_sources`) registers its loaders here with
`@register("name")`; `tltk.data.load` looks them up.

Example::

    @register("my-photos")
    def load_my_photos(cfg, split_seed):
        ...
"""

from __future__ import annotations

from tltk.registry import Registry

SOURCES = Registry("--data/dataset")
register = SOURCES.register
