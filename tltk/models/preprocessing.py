"""`Preprocess`: a backbone's input normalisation as a serialisable layer.

Putting preprocessing inside the model means a saved `.keras` model takes raw RGB
pixels 0..255, like the images users have. It replaces the `preprocess_input`
functions of `keras.applications`, whose three conventions are:

- `caffe` (VGG, ResNet): RGB -> BGR, subtract the ImageNet mean per channel;
- `torch` (DenseNet): scale to 0..1, subtract mean, divide by std per channel;
- `tf` (Inception, MobileNet): scale to -1..1;
- `none`: the backbone normalises itself (EfficientNet) or there is nothing to undo.

Example:
    >>> import numpy as np
    >>> layer = Preprocess("tf")
    >>> float(layer(np.full((1, 1, 1, 3), 255.0))[0, 0, 0, 0])
    1.0
"""

from __future__ import annotations

import keras
from keras import ops

from tltk.config import Preprocess, choices

MODES = choices(Preprocess)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tltk")
class Preprocess(keras.layers.Layer):
    """Map raw RGB 0..255 to the input range a backbone was trained with."""

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
