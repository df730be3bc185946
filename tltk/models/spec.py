"""`BackboneSpec`: what tltk knows about one backbone, as data.

Its own module, so that the backbone registry (`backbones`), model files (`modelfile`)
and keras-hub presets (`hub`) all build specs without importing each other.

Example::

    spec = get_backbone("vgg19")
    spec.blocks[:2], spec.preprocess  # -> (('block5', 'block4'), 'caffe')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """Everything tltk needs to know about one backbone (pure data but `builder`).

    Blocks are declared top-down by name, the way timm's `group_matcher` declares
    layer groups: a block owns the layers whose names match `block_pattern` (with
    `{block}` the block's name), and every layer after the block below it.
    """

    name: str
    description: str
    builder: Callable[..., keras.Model]  # (input_shape, weights) -> model without top
    preprocess: str  # a `tltk.models.preprocessing.Preprocess` mode
    default_size: int
    min_size: int
    blocks: tuple[str, ...]  # top-down
    params: int | None = None  # parameters of the base without top, for `tltk backbones`
    app: str | None = None  # the keras.applications function, e.g. "VGG19"
    imagenet_file: str | None = None  # the notop weights file name in the Keras cache
    pooling: str = "avg"  # how the head reduces the feature map: avg | flatten
    pretrained: bool = True  # False for the scratch baseline: train everything
    # A layer belongs to block B when its name matches this (`{block}` -> B) in full.
    block_pattern: str = r"{block}(_.*)?"
    stem_end: str | None = None  # the last layer below the bottom block, when not implied
    # Blocks that layer names do not carry (a model file's resolution stages): the last
    # layer of each block, by block name.
    block_ends: dict | None = None
    # A model file or keras-hub preset (see tltk.models.modelfile / tltk.models.hub):
    source: str | None = None  # the file path, or hub:PRESET
    cut: str | None = None  # the layer whose output is the feature map
    top_classes: int | None = None  # classes of the source's own classifier, if kept
    top_builder: Callable[..., keras.Model] | None = None  # (input_shape) -> whole classifier
