"""Backbone registry: one `BackboneSpec` per name, as data.

A spec says how to build the convolutional base, how its inputs are normalised,
its default and minimum input size, and its *named blocks from the top down*. A
block is named by the prefix its layer names share (`block5`, `conv5_block3`,
`mixed10`, ...); it owns every layer after the block below it, up to and including
its last layer, in topological order. So a block is well defined even where layer
names don't carry the block (InceptionV3's branch convolutions).

Example:
    >>> spec = get_backbone("vgg19")
    >>> spec.blocks[:2], spec.default_size
    (('block5', 'block4'), 224)
    >>> base = build_backbone(spec, weights="none", image_size=64)
    >>> set_trainable(base, spec, unfreeze=1)  # block5 trainable, BatchNorm frozen
    ['block5']
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import keras

from tltk.errors import TltkError, unknown_name
from tltk.log import keras_chatter
from tltk.models.preprocessing import IMAGENET_STD_RGB
from tltk.models.rebuild import rebuild
from tltk.models.spec import BackboneSpec
from tltk.registry import Registry


def keras_app(name: str) -> Callable[..., keras.Model]:
    """The builder of a keras.applications model without its top."""
    def build(input_shape, weights):
        fn = getattr(keras.applications, name)
        return fn(include_top=False, weights=weights, input_shape=input_shape)
    return build


def _numbered(prefix: str, stage_blocks: dict[int, int], fmt: str) -> tuple[str, ...]:
    """Block names for stages with numbered blocks, top-down (e.g. ResNet's conv5_block3)."""
    names = []
    for stage in sorted(stage_blocks, reverse=True):
        for block in range(stage_blocks[stage], 0, -1):
            names.append(fmt.format(prefix=prefix, stage=stage, block=block))
    return tuple(names)


def _efficientnet_blocks(repeats: tuple[int, ...]) -> tuple[str, ...]:
    names = [f"block{stage}{chr(ord('a') + i)}"
             for stage, n in enumerate(repeats, start=1) for i in range(n)]
    return tuple(reversed(names))


def build_scratch(input_shape, weights=None) -> keras.Model:
    """The from-scratch baseline's convolutional base: five conv + max-pool blocks.

    Filters double as resolution halves (VGG's rule, keeping compute per block
    roughly level) and stop at 256: at 128 px the flattened map is then 4x4x256 =
    4,096 features, small enough for the single dense layer to fit a few thousand
    images without drowning in parameters.
    """
    filters = (32, 64, 128, 256, 256)
    inputs = keras.Input(input_shape, name="scratch_input")
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, strides=1, padding="same", activation="relu",
                                name=f"conv{i}_conv")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"conv{i}_pool")(x)
    return keras.Model(inputs, x, name="scratch")


def _application(name: str, app: str, **fields) -> BackboneSpec:
    return BackboneSpec(name=name, app=app, builder=keras_app(app), **fields)


_VGG_BLOCKS = ("block5", "block4", "block3", "block2", "block1")
BACKBONES = Registry("--backbone")
for _spec in [
    _application("vgg16", "VGG16", description="VGG16 (Simonyan & Zisserman 2014)",
                 params=14_714_688, preprocess="caffe", default_size=224, min_size=32,
                 blocks=_VGG_BLOCKS,
                 imagenet_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    _application("vgg19", "VGG19", description="VGG19, the thesis's backbone",
                 params=20_024_384, preprocess="caffe", default_size=224, min_size=32,
                 blocks=_VGG_BLOCKS,
                 imagenet_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    _application("resnet50", "ResNet50", description="ResNet-50 (He et al. 2015)",
                 params=23_587_712, preprocess="caffe", default_size=224, min_size=32,
                 blocks=_numbered("conv", {5: 3, 4: 6, 3: 4, 2: 3},
                                  "{prefix}{stage}_block{block}"),
                 imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    _application("densenet201", "DenseNet201", description="DenseNet-201 (Huang et al. 2016)",
                 params=18_321_984, preprocess="torch", default_size=224, min_size=32,
                 blocks=_numbered("conv", {5: 32, 4: 48, 3: 12, 2: 6},
                                  "{prefix}{stage}_block{block}"),
                 imagenet_file="densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # Inner concatenations are named mixed9_0, mixed9_1 (the latter inside mixed10), so
    # blocks end at the exact names; below mixed1 is the stem.
    _application("inceptionv3", "InceptionV3", description="Inception-v3 (Szegedy et al. 2015)",
                 params=21_802_784, preprocess="tf", default_size=299, min_size=75,
                 blocks=tuple(f"mixed{i}" for i in range(10, 0, -1)),
                 imagenet_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 block_pattern="{block}", stem_end="mixed0"),
    _application("mobilenetv2", "MobileNetV2", description="MobileNetV2 1.0 (Sandler et al. 2018)",
                 params=2_257_984, preprocess="tf", default_size=224, min_size=32,
                 blocks=(*(f"block_{i}" for i in range(16, 0, -1)), "expanded_conv"),
                 imagenet_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}"
                               "_no_top.h5"),
    _application("efficientnetb0", "EfficientNetB0", description="EfficientNet-B0 (Tan & Le "
                 "2019)", params=4_049_571, preprocess="none", default_size=224, min_size=32,
                 blocks=_efficientnet_blocks((1, 2, 2, 3, 3, 4, 1)),
                 imagenet_file="efficientnetb0_notop.h5"),
    BackboneSpec(name="scratch", description="the thesis's from-scratch 5-conv baseline CNN",
                 builder=build_scratch, preprocess="tf", default_size=128, min_size=32,
                 blocks=tuple(f"conv{i}" for i in range(5, 0, -1)), params=978_496,
                 pooling="flatten", pretrained=False),
]:
    BACKBONES.register(_spec.name, _spec)


def get_backbone(name: str, options=None) -> BackboneSpec:
    """The spec of `name`: a registered name, a model file or `hub:PRESET_OR_DIR`.

    `options` is a `tltk.config.BackboneOptions` (cut, blocks, preprocess). An unknown
    registered name is a one-line error that suggests close names.

    Example::

        get_backbone("../shared/weights/efficientnet_lite0_imagenet.keras").blocks[0]
        # 'block7a'
    """
    from tltk.models import hub, modelfile

    if name not in BACKBONES and name.startswith(hub.PREFIX):
        return hub.hub_spec(name, options)
    if name not in BACKBONES and modelfile.is_model_file(name):
        return modelfile.file_spec(name, options)
    spec = BACKBONES.get(name)
    if options is not None and (options.cut or options.blocks):
        raise TltkError(f"--cut/--blocks: only for a model-file or hub: backbone; {name} "
                        "declares its blocks (see `tltk backbones`)")
    if options is not None and options.preprocess:
        spec = replace(spec, preprocess=options.preprocess)
    return spec


def config_backbone(config) -> BackboneSpec:
    """The spec a `RunConfig` trains: its backbone read with its backbone options."""
    return get_backbone(config.backbone, config.backbone_options)


def canonical_backbone(name: str) -> str:
    """`name` with a model file or local preset directory made absolute (for config.yaml)."""
    from tltk.models import hub, modelfile

    if name.startswith(hub.PREFIX):
        return hub.canonical(name)
    if modelfile.is_model_file(name) and Path(name).expanduser().is_file():
        return str(Path(name).expanduser().resolve())
    return name


def cache_name(spec: BackboneSpec) -> str:
    """The backbone's part of a feature-cache key: a model file's path and cut too."""
    return f"{spec.name}:{spec.source}@{spec.cut}" if spec.source else spec.name


def weights_label(spec: BackboneSpec, weights: str) -> str:
    """How a run's log names its weights, e.g. 'imagenet' or 'the file's own'."""
    if spec.source and weights != "none":
        return "the file's own" if not spec.source.startswith("hub:") else "the preset's own"
    return weights


def check_image_size(spec: BackboneSpec, image_size: int) -> None:
    if image_size < spec.min_size:
        raise TltkError(f"--image-size: {image_size} is below {spec.name}'s minimum of "
                        f"{spec.min_size} px; use --image-size {spec.min_size} or more")


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def build_backbone(spec: BackboneSpec, weights: str, image_size: int) -> keras.Model:
    """Build the base at `image_size` with `weights`: imagenet | none | a file path."""
    check_image_size(spec, image_size)
    shape = (image_size, image_size, 3)
    if weights == "none" or not spec.pretrained:
        return spec.builder(shape, None)
    if spec.source:
        return _build_source(spec, shape, weights)
    if weights == "imagenet":
        return _build_imagenet(spec, shape)
    return _build_from_file(spec, shape, Path(weights).expanduser())


def _build_source(spec: BackboneSpec, shape, weights: str) -> keras.Model:
    """A model file or preset carries its weights: 'imagenet' (the default) means them."""
    if weights != "imagenet":
        raise TltkError(f"--weights: {spec.source} carries its own weights; leave --weights "
                        "out (or give 'none' for random weights)")
    return spec.builder(shape, "source")


def _build_imagenet(spec: BackboneSpec, shape) -> keras.Model:
    try:
        return spec.builder(shape, "imagenet")
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        if not _looks_like_download_failure(exc):
            raise
        fname = (spec.imagenet_file or "").replace("{size}", str(shape[0]))
        raise TltkError(
            f"--weights: ImageNet weights for {spec.name} could not be downloaded (offline?); "
            f"pass --weights PATH to a local weights file, or put {fname} in "
            f"{keras_cache_dir()}") from None


def _looks_like_download_failure(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("url", "fetch", "download", "connection", "resolve",
                                   "network", "http", "name or service"))


def _build_from_file(spec: BackboneSpec, shape, path: Path) -> keras.Model:
    if not path.is_file():
        raise TltkError(f"--weights: file not found: {path}; give a weights file for "
                        f"{spec.name}, 'imagenet' or 'none'")
    model = imagenet_graph(spec, spec.builder(shape, None))
    try:
        with keras_chatter():  # a mismatch warns once per layer before it raises
            model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - shape/format mismatches all mean the same fix
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TltkError(f"--weights: {path} does not fit backbone {spec.name} without top "
                        f"({first}); check --backbone and the file") from None
    return model


def imagenet_graph(spec: BackboneSpec, model: keras.Model) -> keras.Model:
    """`model` as keras.applications builds it for `weights="imagenet"`.

    EfficientNet B0-B7 add a `Rescaling(1 / sqrt(std))` after their Normalization only
    for ImageNet weights (their original code divided by the variance); a local copy of
    those weights needs it too, or inputs end up about 2x off their trained scale.
    """
    if not re.fullmatch(r"EfficientNetB\d", spec.app or ""):
        return model
    norm = next(layer.name for layer in model.layers
                if isinstance(layer, keras.layers.Normalization))
    scale = [1.0 / math.sqrt(std) for std in IMAGENET_STD_RGB]

    def after_norm(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return keras.layers.Rescaling(scale)(out) if layer.name == norm else out

    return rebuild(model, model.input_shape[1:], copy_weights=False, call=after_norm)


def weights_checksum(model: keras.Model) -> str:
    """A hash of the model's weight values (keys the feature cache)."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(w.path.encode())
        digest.update(keras.ops.convert_to_numpy(w).tobytes())
    return digest.hexdigest()[:16]


def block_layers(model: keras.Model, spec: BackboneSpec) -> dict[str, list]:
    """Map each declared block (top-down) to its layers; see the module docstring."""
    layers = model.layers
    ends = {}
    for block in spec.blocks:
        idx = [i for i, layer in enumerate(layers) if _in_block(layer.name, block, spec)]
        if spec.block_ends and block in spec.block_ends:
            idx = [i for i, layer in enumerate(layers) if layer.name == spec.block_ends[block]]
        if not idx:
            raise ValueError(f"{spec.name}: block '{block}' matches no layer")
        ends[block] = max(idx)
    order = sorted(spec.blocks, key=ends.get)  # bottom-up
    out = {}
    for i, block in enumerate(order):
        start = ends[order[i - 1]] + 1 if i else _first_block_start(layers, block, spec)
        stop = ends[block] + 1 if i < len(order) - 1 else len(layers)
        out[block] = layers[start:stop]
    return {block: out[block] for block in spec.blocks}


def _in_block(name: str, block: str, spec: BackboneSpec) -> bool:
    return re.fullmatch(spec.block_pattern.format(block=re.escape(block)), name) is not None


def _first_block_start(layers, block: str, spec: BackboneSpec) -> int:
    """The bottom block starts at its first named layer; the stem below stays frozen.

    Resolution stages (`block_ends`) cover everything above the input.
    """
    if spec.block_ends:
        return 1
    if spec.stem_end:
        return [layer.name for layer in layers].index(spec.stem_end) + 1
    return min(i for i, layer in enumerate(layers) if _in_block(layer.name, block, spec))


def resolve_unfreeze(spec: BackboneSpec, unfreeze) -> list[str] | str:
    """Normalise a stage's `unfreeze` to "all" or a list of block names."""
    if unfreeze in ("all", -1):
        return "all"
    if unfreeze in (None, "none", "0", 0):
        return []
    if isinstance(unfreeze, str) and unfreeze.isdigit():
        unfreeze = int(unfreeze)
    if isinstance(unfreeze, int):
        if unfreeze < 0 or unfreeze > len(spec.blocks):
            raise TltkError(f"unfreeze: {unfreeze} is outside 0..{len(spec.blocks)} blocks of "
                            f"{spec.name}; use a count, 'all' or block names")
        return list(spec.blocks[:unfreeze])
    names = unfreeze.split(",") if isinstance(unfreeze, str) else list(unfreeze)
    unknown = [n for n in names if n not in spec.blocks]
    if unknown:
        raise unknown_name("unfreeze", unknown[0], spec.blocks)
    return names


def set_trainable(model: keras.Model, spec: BackboneSpec, unfreeze,
                  batchnorm: str = "frozen") -> list[str]:
    """Make the chosen blocks trainable; everything else frozen, and BatchNorm too
    unless `batchnorm="train"` (then BatchNorm in the chosen blocks is trainable).

    Frozen BatchNormalization layers run in inference mode in Keras 3, so their
    ImageNet statistics are never updated by small fine-tuning batches. The scratch
    baseline is trained whole. Returns the names of the trainable blocks.

    Example::

        set_trainable(base, spec, unfreeze=1, batchnorm="train")
        # ['block5']
    """
    if not spec.pretrained:
        model.trainable = True
        return list(spec.blocks)
    chosen = resolve_unfreeze(spec, unfreeze)
    model.trainable = True
    if chosen == "all":
        trainable = set(model.layers)
        chosen = list(spec.blocks)
    else:
        groups = block_layers(model, spec)
        trainable = {layer for block in chosen for layer in groups[block]}
    for layer in model.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer in trainable and (batchnorm == "train" or not is_bn)
    return chosen


def backbone_table() -> str:
    """A text table of registered backbones for `tltk backbones`."""
    rows = [f"{'name':<15}{'size':>5}{'min':>5}  {'preprocess':<11}{'params':>11}  "
            f"{'blocks (top down)':<46}description"]
    for spec in BACKBONES.values():
        blocks = ", ".join(spec.blocks[:2]) + f", ... ({len(spec.blocks)} blocks)"
        params = f"{spec.params:,}" if spec.params is not None else "-"
        rows.append(f"{spec.name:<15}{spec.default_size:>5}{spec.min_size:>5}  "
                    f"{spec.preprocess:<11}{params:>11}  {blocks:<46}{spec.description}")
    return "\n".join(rows)


def describe_backbone(spec: BackboneSpec) -> str:
    """What tltk read from a backbone, for `tltk backbones NAME_OR_FILE`.

    Example:
        >>> print(describe_backbone(get_backbone("lite0.keras")))  # doctest: +SKIP
        backbone     efficientnet_lite0_imagenet (model file ...)
    """
    size = f"{spec.default_size} px default, {spec.min_size} px minimum"
    if spec.block_ends:
        how = "resolution stages, ending at " + ", ".join(
            f"{b}={spec.block_ends[b]}" for b in spec.blocks)
    else:
        how = f"{len(spec.blocks)} blocks: {', '.join(spec.blocks)}"
    top = (f"{spec.top_classes}-class classifier kept (for LEEP and full-original)"
           if spec.top_classes else "none")
    lines = [("backbone", f"{spec.name} ({spec.description})"),
             ("feature map", f"output of layer '{spec.cut}'" if spec.cut else "its output"),
             ("blocks", f"{how} (top down)"),
             ("parameters", f"{spec.params:,}" if spec.params is not None else "-"),
             ("input size", size), ("preprocess", spec.preprocess), ("top", top)]
    return "\n".join(f"{key:<13}{value}" for key, value in lines)
