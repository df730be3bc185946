"""A backbone's input normalisation as a layer inside the model.

Putting preprocessing inside the model means a saved `.keras` model takes raw RGB
pixels 0..255, like the images users have. It replaces the `preprocess_input`
functions of `keras.applications`, whose three conventions are:

- `caffe` (VGG, ResNet): RGB -> BGR, subtract the ImageNet mean per channel;
- `torch` (DenseNet): scale to 0..1, subtract mean, divide by std per channel;
- `tf` (Inception, MobileNet): scale to -1..1;
- `none`: the backbone normalises itself (EfficientNet) or there is nothing to undo.

`preprocess_layer` builds it from Keras' built-in layers, so a saved model loads in
plain Keras (safe mode) without tltk. `Preprocess`, the custom layer models saved
before held, stays registered so those files still load; `builtin_preprocess` turns
one into its built-in equivalent (`tltk export --format keras` does).

Example:
    >>> import numpy as np
    >>> layer = preprocess_layer("tf")
    >>> float(layer(np.full((1, 1, 1, 3), 255.0))[0, 0, 0, 0])
    1.0
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tltk.config import Preprocess, choices

MODES = choices(Preprocess)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess_layer(mode: str, name: str = "preprocess") -> keras.layers.Layer:
    """Built-in Keras layer(s) for a mode: raw RGB 0..255 in, the backbone's range out.

    `tf` and `torch` are a per-channel `Rescaling`; `caffe` (RGB -> BGR, minus the
    mean) a frozen 1x1 `Conv2D` whose kernel swaps the channels and whose bias is
    minus the mean; `none` an `Identity`.
    """
    if mode not in MODES:
        raise ValueError(f"Preprocess mode must be one of {MODES}, got {mode!r}")
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)
    if mode == "torch":
        scale = tuple(1 / (255.0 * s) for s in IMAGENET_STD_RGB)
        offset = tuple(-m / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB))
        return keras.layers.Rescaling(scale, offset=offset, name=name)
    if mode == "caffe":
        flip = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        bias = keras.initializers.Constant([-m for m in CAFFE_MEAN_BGR])
        return keras.layers.Conv2D(3, 1, name=name, trainable=False, dtype="float32",
                                   kernel_initializer=keras.initializers.Constant(flip),
                                   bias_initializer=bias)
    return keras.layers.Identity(name=name)


def builtin_preprocess(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The built-in equivalent of a `Preprocess` layer (same name); other layers as they are.

    Example::

        keras.models.clone_model(model, clone_function=builtin_preprocess)
    """
    if isinstance(layer, Preprocess):
        return preprocess_layer(layer.mode, name=layer.name)
    return layer


@keras.saving.register_keras_serializable(package="tltk")
class Preprocess(keras.layers.Layer):
    """Map raw RGB 0..255 to the input range a backbone was trained with.

    Kept for models saved before `preprocess_layer` (they hold this class); new
    models use `preprocess_layer`.
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Preprocess mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, dtype=x.dtype)
            std = ops.convert_to_tensor(IMAGENET_STD_RGB, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
