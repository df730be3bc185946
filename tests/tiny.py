"""The tiny "pretrained" backbone of the tests, importable without pytest (subprocesses
register it with `python -m tests.tiny ARGS`, which runs the tltk CLI with it).

Example:
    $ python -m tests.tiny train demo --config tiny.yaml --out runs/x
"""

from __future__ import annotations

# tltk first: its import of TensorFlow keeps the native start-up lines off stderr.
from tltk.models import backbones


def build_tiny(input_shape, weights=None):
    """Two named conv blocks: a 'pretrained' backbone small enough for fast tests."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            name="block1_conv")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                            name="block2_conv")(x)
    return keras.Model(inputs, x, name="tiny")


def tiny_model_file(path, size: int = 32):
    """A Lite0-shaped stand-in: rescaling inside, BatchNorm at Keras's 0.99, a
    `block7a_` top block and a `top_activation` feature map."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_activation")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, name="block7a_project_conv")(x)
    x = keras.layers.BatchNormalization(name="block7a_project_bn")(x)
    x = keras.layers.ReLU(name="top_activation")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10, name="predictions")(x)).save(path)
    return path


# Frozen stages of a pretrained backbone train on cached features, as VGG16's would.
TINY = backbones.BackboneSpec(name="tiny", description="a two-block test CNN", builder=build_tiny,
                              preprocess="tf", default_size=32, min_size=32,
                              blocks=("block2", "block1"))

if __name__ == "__main__":
    from tltk.cli import main

    backbones.BACKBONES.register("tiny", TINY)
    main()
