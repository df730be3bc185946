"""A Keras model file as a backbone: `--backbone model.keras` (or a full-model `.h5`).

The file is read once into a `BackboneSpec`:

- **cut**: the feature map is the output of the last layer with a 4-D output
  (`--cut LAYER` names another); everything above it (pooling, classifier) is the
  *top*, kept aside for LEEP and the full-original baseline when it outputs classes;
- **blocks**, top-down, from the layer names: keras.applications-style prefixes
  (`block7a`, `conv5_block3`, `mixed10`, `block_16`, keras-hub's `stack3_block1`) or,
  failing that, stages of equal spatial resolution (`stage5`, ..., `stage1`);
  `--blocks a,b,c` overrides them;
- **preprocessing**: `none` when the model begins with its own Rescaling or
  Normalization layers, else `--preprocess caffe|torch|tf|none`.

The spec's builder reloads the file and rebuilds the part below the cut at the run's
image size, so a saved run model holds only the file's own (built-in) layers.

Example::

    spec = file_spec("efficientnet_lite0_imagenet.keras")
    spec.blocks[:2], spec.preprocess, spec.cut, spec.top_classes
    # (('block7a', 'block6d'), 'none', 'top_activation', 1000)
    base = build_backbone(spec, "imagenet", 192)  # the file's weights, at 192 px
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import keras

from tltk.errors import TltkError, unknown_name
from tltk.models.rebuild import rebuild
from tltk.models.spec import BackboneSpec

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
DEFAULT_SIZE = 224  # for a model that takes any input size
MIN_SIZE = 32
# Block-name schemes, as (regex whose group 1 is the block, pattern assigning a layer to
# a block). Inception's mixed9_1 lies inside mixed10, so its blocks are exact names.
SCHEMES = (
    (r"(conv\d+_block\d+)_.*", r"{block}(_.*)?"),  # ResNet, DenseNet
    (r"(stack\d+_block\d+)_.*", r"{block}(_.*)?"),  # keras-hub ResNet
    (r"(block\d+[a-z])_.*", r"{block}(_.*)?"),  # EfficientNet
    (r"(block_\d+|expanded_conv)_.*", r"{block}(_.*)?"),  # MobileNetV2
    (r"(block\d+)_.*", r"{block}(_.*)?"),  # VGG
    (r"(mixed\d+)", r"{block}"),  # InceptionV3
)
PREPROCESSING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


def is_model_file(name: str) -> bool:
    """Whether `--backbone NAME` names a model file (existing, or with a model suffix)."""
    return Path(name).expanduser().is_file() or name.lower().endswith(MODEL_SUFFIXES)


def load_file(path: Path) -> keras.Model:
    """The model in `path`, loaded in safe mode; one-line errors for what is not a model."""
    if not path.is_file():
        raise TltkError(f"--backbone: file not found: {path}; give a .keras or full-model "
                        ".h5 file, or a name from `tltk backbones`")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - every unreadable file gets the same advice
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise TltkError(f"--backbone: {path} is not a Keras model file ({first}); give a "
                        ".keras or full-model .h5 file (a weights-only file goes with "
                        "--backbone NAME --weights FILE)") from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise TltkError(f"--backbone: {path} is not a single-input Keras model")
    return model


def file_spec(name: str, options=None):
    """The `BackboneSpec` of the model file `name` (cached per file and options)."""
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        load_file(path)  # raises the one-line error
    stat = path.stat()
    return _file_spec(str(path), stat.st_mtime_ns, stat.st_size, options_key(options))


def options_key(options) -> tuple:
    if options is None:
        return (None, None, None)
    blocks = tuple(options.blocks) if options.blocks else None
    return options.cut, blocks, options.preprocess


@functools.lru_cache(maxsize=16)
def _file_spec(path: str, _mtime: int, _size: int, options: tuple):
    model = load_file(Path(path))
    return model_spec(model, safe_name(Path(path).stem), options, source=path,
                      loader=functools.partial(load_file, Path(path)),
                      description=f"model file {path}")


def model_spec(model: keras.Model, name: str, options: tuple, source: str,
               loader: Callable[[], keras.Model], description: str, preprocess=None,
               prefix: Callable | None = None):
    """A `BackboneSpec` for a loaded model; `loader()` gives a fresh copy of it.

    `preprocess` is what the source says (a hub preset's converter), `prefix` a layer
    factory put in front of the rebuilt base (that converter's rescaling).
    """
    cut_name, block_names, preprocess_option = options
    cut = cut_layer(model, cut_name, source)
    base = keras.Model(model.input, cut.output)
    layout = infer_blocks(base) if not block_names else given_blocks(base, block_names, source)
    top = _top_classes(model, cut)
    size = model.input_shape[1] or DEFAULT_SIZE
    mode = preprocess_option or preprocess
    if mode is None:
        mode = detect_preprocess(model, source)
        description += f"; its first layer '{model.layers[1].name}' normalises the input"
    if preprocess_option:
        prefix = None  # the user's choice replaces the source's own rescaling
    return BackboneSpec(
        name=name, description=description, preprocess=mode, default_size=size,
        min_size=MIN_SIZE, params=base.count_params(), source=source, cut=cut.name,
        top_classes=top, builder=functools.partial(_build_base, loader, cut.name, prefix),
        top_builder=functools.partial(_build_full, loader, prefix) if top else None,
        **layout)


def safe_name(text: str) -> str:
    """A Keras-safe model name from a file stem or preset name."""
    return re.sub(r"\W+", "_", text).strip("_") or "model"


def cut_layer(model: keras.Model, name: str | None, source: str):
    """The layer whose 4-D output is the feature map: `name`, or the last 4-D one."""
    if name:
        names = [layer.name for layer in model.layers]
        if name not in names:
            raise unknown_name(f"--cut (a layer of {source})", name, names[-8:])
        layer = model.get_layer(name)
        if len(layer.output.shape) != 4:
            raise TltkError(f"--cut: layer '{name}' of {source} outputs shape "
                            f"{tuple(layer.output.shape)}, not a 4-D feature map; "
                            "name a convolutional layer")
        return layer
    maps = [layer for layer in model.layers[1:] if len(layer.output.shape) == 4]
    if not maps:
        raise TltkError(f"--backbone: {source} has no 4-D feature map (output "
                        f"{tuple(model.output.shape)}); tltk needs a convolutional model")
    return maps[-1]


def _top_classes(model: keras.Model, cut) -> int | None:
    """Classes of the model's own classifier above the cut, if it ends in one."""
    shape = model.output.shape
    return int(shape[-1]) if len(shape) == 2 and model.layers[-1] is not cut else None


def detect_preprocess(model: keras.Model, source: str) -> str:
    """`none` for a model that begins with its own Rescaling/Normalization layers."""
    first = model.layers[1] if len(model.layers) > 1 else None
    if isinstance(first, PREPROCESSING_LAYERS):
        return "none"
    raise TltkError(f"--preprocess: {source} does not begin with its own rescaling, so its "
                    "input range can't be told; pass --preprocess caffe|torch|tf|none")


# --- named blocks -----------------------------------------------------------------

def infer_blocks(base: keras.Model) -> dict:
    """Block layout of `base` from its layer names, else from its resolution stages.

    Returns the `BackboneSpec` fields blocks (top-down), block_pattern, stem_end and
    block_ends.

    Example:
        >>> infer_blocks(keras.applications.VGG16(weights=None, include_top=False))["blocks"]
        ('block5', 'block4', 'block3', 'block2', 'block1')
    """
    names = [layer.name for layer in base.layers]
    best = max(((_scheme_blocks(names, regex), pattern) for regex, pattern in SCHEMES),
               key=lambda found: found[0][1])
    (blocks, _), pattern = best
    if len(blocks) >= 2:
        if pattern == "{block}":  # exact names end blocks; the bottom one is the stem
            return {"blocks": tuple(reversed(blocks[1:])), "block_pattern": pattern,
                    "stem_end": blocks[0], "block_ends": None}
        return {"blocks": tuple(reversed(blocks)), "block_pattern": pattern,
                "stem_end": None, "block_ends": None}
    return resolution_stages(base)


def _scheme_blocks(names: list[str], regex: str) -> tuple[list[str], int]:
    """Blocks of one scheme, bottom-up by their last layer, and how many layers match."""
    last, matched = {}, 0
    for i, name in enumerate(names):
        found = re.fullmatch(regex, name)
        if found:
            last[found.group(1)] = i
            matched += 1
    return sorted(last, key=last.get), matched


def resolution_stages(base: keras.Model) -> dict:
    """One block per run of layers with the same spatial size: stage1 (bottom) upwards."""
    # Layers called in another graph report that graph's shapes: probe with new ones.
    probe = rebuild(base, (DEFAULT_SIZE, DEFAULT_SIZE, 3), copy_weights=False)
    runs = []  # [spatial size, last layer of the run], bottom-up
    for layer in probe.layers[1:]:
        shape = layer.output.shape
        if len(shape) != 4:
            continue
        if runs and runs[-1][0] == shape[1]:
            runs[-1][1] = layer.name
        else:
            runs.append([shape[1], layer.name])
    block_ends = {f"stage{i}": end for i, (_, end) in enumerate(runs, start=1)}
    return {"blocks": tuple(reversed(block_ends)), "block_pattern": "{block}",
            "stem_end": None, "block_ends": block_ends}


def given_blocks(base: keras.Model, names: tuple[str, ...], source: str) -> dict:
    """`--blocks`: each names the layers it prefixes; ordered top-down by where they end."""
    pattern = r"{block}(_.*)?"
    ends = {}
    for block in names:
        idx = [i for i, layer in enumerate(base.layers)
               if re.fullmatch(pattern.format(block=re.escape(block)), layer.name)]
        if not idx:
            raise TltkError(f"--blocks: '{block}' names no layer of {source} (a block is a "
                            "layer-name prefix, e.g. block7a); see `tltk backbones FILE`")
        ends[block] = max(idx)
    return {"blocks": tuple(sorted(ends, key=ends.get, reverse=True)),
            "block_pattern": pattern, "stem_end": None, "block_ends": None}


# --- building -----------------------------------------------------------------------

def _build_base(loader, cut: str, prefix, input_shape, weights) -> keras.Model:
    """The part of the (re)loaded model below the cut, at `input_shape`.

    `weights=None` gives the same layers freshly initialised (random weights).
    """
    model = loader()
    base = keras.Model(model.input, model.get_layer(cut).output, name=model.name)
    return rebuild(base, input_shape, prefix, copy_weights=weights is not None,
                   name=safe_name(model.name))


def _build_full(loader, prefix, input_shape) -> keras.Model:
    """The whole (re)loaded model, its own classifier included, ending in a softmax."""
    model = rebuild(loader(), input_shape, prefix)
    last = model.layers[-1]
    if getattr(last, "activation", None) is keras.activations.softmax:
        return model
    probs = keras.layers.Softmax(name="source_softmax")(model.output)
    return keras.Model(model.input, probs, name=model.name)
