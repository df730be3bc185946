"""Rebuilding a Keras model's graph on a new input, with new layers and its weights.

Model files, keras-hub presets and keras.applications' ImageNet variants all need it;
it imports nothing of tltk's, so each of them can.

Example::

    rebuild(base, (160, 160, 3)).input_shape
    # (None, 160, 160, 3)
"""

from __future__ import annotations

from collections.abc import Callable

import keras


def rebuild(model: keras.Model, input_shape, prefix: Callable | None = None,
            copy_weights: bool = True, name: str | None = None,
            call: Callable | None = None) -> keras.Model:
    """`model`'s graph on a new `input_shape` input, with new layers (and its weights).

    New layers, not shared ones: a shared layer's `.output` is its first graph's, and
    tltk cuts models at layer outputs. `prefix()` makes a layer applied to the raw input
    first (a preset's rescaling); `call(layer, *args, **kwargs)` replaces each layer
    call (to add a layer after one). `copy_weights=False` keeps fresh random weights.

    Example::

        rebuild(base, (160, 160, 3)).input_shape
        # (None, 160, 160, 3)
    """
    inputs = keras.Input(input_shape, name=f"{name or model.name}_input")
    state = {}
    call = call or (lambda layer, *args, **kwargs: layer(*args, **kwargs))

    def call_with_prefix(layer, *args, **kwargs):
        if prefix is not None and args and args[0] is inputs:
            if "x" not in state:
                state["x"] = prefix()(inputs)
            args = (state["x"], *args[1:])
        return call(layer, *args, **kwargs)

    out = keras.models.clone_model(model, input_tensors=inputs, call_function=call_with_prefix)
    new = keras.Model(out.input, out.output, name=name or model.name)
    if copy_weights:
        for layer in model.layers:
            if layer.weights:
                new.get_layer(layer.name).set_weights(layer.get_weights())
    return new
