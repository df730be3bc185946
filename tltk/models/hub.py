"""keras-hub presets as backbones: `--backbone hub:PRESET_OR_DIR`.

keras-hub is an optional extra (`pip install -e ".[hub]"`, about 260 MB with
tensorflow-text) imported only here, only when a `hub:` backbone is used. The preset's
backbone is *flattened* into a plain functional model of its own layers (with the
preset image converter's `x * scale + offset` as a leading `Rescaling`), so the
block, caching and unfreezing machinery of `tltk.models.modelfile` applies, and for
families built from stock layers (ResNet v1, ...) a saved run model reloads without
keras-hub.

Offline, a named preset cannot be downloaded; save it once on a connected machine
with `keras_hub.models.Backbone.from_preset(NAME).save_to_preset(DIR)` and pass
`--backbone hub:DIR`. Local directories are always passed to keras-hub as absolute
paths: a relative directory named like a built-in preset would go to Kaggle.

Example::

    spec = hub_spec("hub:/presets/tiny_resnet")
    spec.blocks, spec.preprocess
    # (('stack1_block0', 'stack0_block0'), 'none')
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from tltk.errors import TltkError

PREFIX = "hub:"
INSTALL = 'pip install -e ".[hub]"'


def keras_hub():
    """The keras_hub module, or a one-line error saying how to install it."""
    try:
        import keras_hub as module
    except ImportError:
        raise TltkError(f"--backbone hub:...: keras-hub is not installed; {INSTALL} "
                        "(or pip install keras-hub)") from None
    return module


def canonical(name: str) -> str:
    """`hub:DIR` with DIR absolute (named presets unchanged)."""
    preset = name[len(PREFIX):]
    path = Path(preset).expanduser()
    return PREFIX + str(path.resolve()) if path.is_dir() else name


def resolve(name: str) -> str:
    """The preset as keras-hub should get it: an absolute directory or a built-in name."""
    preset = name[len(PREFIX):]
    if not preset:
        raise TltkError("--backbone hub:: give a preset name or a local preset directory "
                        "after hub:")
    path = Path(preset).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if os.sep in preset or preset.startswith("."):
        raise TltkError(f"--backbone {name}: preset directory not found: {path}")
    if preset not in keras_hub().models.Backbone.presets:
        raise TltkError(f"--backbone {name}: unknown keras-hub preset '{preset}' (not a "
                        "built-in name or a local preset directory)")
    return preset


def load_backbone(name: str, preset: str, weights: bool = True):
    """keras-hub's backbone for `preset`, flattened into a plain functional model."""
    import keras

    hub = keras_hub()
    try:
        backbone = hub.models.Backbone.from_preset(preset, load_weights=weights)
    except OSError as exc:  # requests' ConnectionError is an OSError, as are missing files
        if os.path.isdir(preset):
            raise _unreadable(name, exc) from None
        raise TltkError(f"--backbone {name}: keras-hub preset '{preset}' is not available "
                        f"offline ({type(exc).__name__}); on a connected machine save it "
                        f"with keras_hub.models.Backbone.from_preset('{preset}')"
                        ".save_to_preset(DIR), then pass --backbone hub:DIR") from None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _unreadable(name, exc) from None
    # .input/.output, not .inputs/.outputs: those are lists and would give a list output.
    return keras.Model(backbone.input, backbone.output, name=backbone.name)


def _unreadable(name: str, exc: Exception) -> TltkError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    return TltkError(f"--backbone {name}: not a readable keras-hub preset ({first}); save "
                     "one with backbone.save_to_preset(DIR)")


def converter_rescaling(preset: str) -> dict | None:
    """The preset image converter's scale and offset, or None when it has none."""
    if not os.path.isdir(preset) or not os.path.isfile(os.path.join(preset,
                                                                    "image_converter.json")):
        return None
    try:
        converter = keras_hub().layers.ImageConverter.from_preset(preset)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    config = converter.get_config()
    if config.get("scale") is None and config.get("offset") is None:
        return None
    return {"scale": config.get("scale") or 1.0, "offset": config.get("offset") or 0.0}


def _rescaling(rescale: dict):
    import keras

    return keras.layers.Rescaling(rescale["scale"], rescale["offset"],
                                  name="preset_rescaling")


def hub_spec(name: str, options=None):
    """The `BackboneSpec` of `hub:PRESET_OR_DIR` (cached per preset and options)."""
    from tltk.models.modelfile import options_key

    return _hub_spec(canonical(name), options_key(options))


@functools.lru_cache(maxsize=8)
def _hub_spec(name: str, options: tuple):
    from tltk.models.modelfile import model_spec, safe_name

    preset = resolve(name)
    model = load_backbone(name, preset)
    rescale = converter_rescaling(preset)
    prefix = functools.partial(_rescaling, rescale) if rescale else None
    note = (f"; rescaling x*{rescale['scale']}+{rescale['offset']} from its image converter"
            if rescale else "")
    return model_spec(model, "hub_" + safe_name(Path(preset).name), options, source=name,
                      loader=functools.partial(_loader, name, preset),
                      description=f"keras-hub preset {preset}{note}",
                      preprocess="none" if rescale else None, prefix=prefix)


def _loader(name: str, preset: str):
    return load_backbone(name, preset)
