"""Transfer learning as the Keras guide teaches it (B5's and B6's comparison script).

keras.io, "Transfer learning & fine-tuning" (fchollet): a frozen base called with
`training=False`, augmentation layers inside the model, a dropout 0.2 + linear head
trained with Adam (default rate); then the whole base unfrozen and trained on at
Adam 1e-5 with its BatchNorm layers frozen. `training=False` alone does not keep them
frozen under Keras 3: `fit` calls the outer model with `training=True`, which reaches
the base once `base.trainable = True` (keras-team/keras#20285), so one fine-tuning step
moved the moving means of 33 of the Lite0's 49 BatchNorm layers. The current guide
therefore says to set `layer.trainable = False` on the BatchNorm layers after
unfreezing the base; `compile_stage` does.
`guide_model` and `compile_stage` work with any base (B6 runs MobileNetV2 and
EfficientNet-Lite0); `train_keras_guide` is B5's MobileNetV2 run on a plain cached
tf.data pipeline, on the same flowers-128 split and weights as tltk.

Example::

    history = train_keras_guide(setup, stop=TimeToTarget(0.7))
    model = guide_model(base, keras.layers.Identity(), 5, 160, guide_augmentation())
"""

from __future__ import annotations

import keras
import tensorflow as tf

from benchmarks._flowers import BATCH_SIZE, IMAGE_SIZE, WEIGHTS, FlowersSetup

FROZEN_EPOCHS = 10
FINETUNE_EPOCHS = 10
FINETUNE_LR = 1e-5
GUIDE_BATCH = 64  # the guide's `batch_size = 64` (B5 keeps its measured 32)


def _files(split) -> tf.data.Dataset:
    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE)), label

    ds = tf.data.Dataset.from_tensor_slices((split.paths, split.labels))
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def datasets(setup: FlowersSetup):
    train = _files(setup.dataset.splits["train"]).cache().shuffle(1000).batch(BATCH_SIZE)
    val = _files(setup.dataset.splits["val"]).cache().batch(BATCH_SIZE)
    return train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)


def guide_augmentation() -> keras.Sequential:
    """The guide's own augmentation: horizontal flips and rotations up to 0.1 turn."""
    return keras.Sequential([keras.layers.RandomFlip("horizontal"),
                             keras.layers.RandomRotation(0.1)], name="augmentation")


def b5_augmentation() -> keras.Sequential:
    """B5's augmentation, as B5 was measured with: the guide's plus shifts and zoom."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(10 / 360),
        keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomZoom(0.1)])


def guide_model(base: keras.Model, preprocess: keras.layers.Layer, num_classes: int,
                size: int, augmentation: keras.layers.Layer) -> keras.Model:
    """The guide's classifier around `base` (frozen here): raw 0-255 RGB in, softmax out."""
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = preprocess(augmentation(inputs))
    # As the guide writes it; compile_stage freezes BatchNorm too, since under Keras 3 this
    # training=False no longer holds once the base is trainable (keras-team/keras#20285).
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of `model`, nested models included.

    Example::

        [bn.momentum for bn in batchnorm_layers(model)]  # [0.99, 0.99, ...]
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
    return found


def compile_stage(model: keras.Model, base: keras.Model, stage: str) -> None:
    """Compile for the guide's `frozen` (Adam default) or `finetune` (Adam 1e-5) stage;
    fine-tuning unfreezes the base but keeps its BatchNorm layers frozen."""
    base.trainable = stage == "finetune"
    for layer in batchnorm_layers(base):
        layer.trainable = False
    rate = FINETUNE_LR if stage == "finetune" else 1e-3
    model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def build(num_classes: int) -> tuple[keras.Model, keras.Model]:
    base = keras.applications.MobileNetV2(weights=None, include_top=False,
                                          input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.load_weights(str(WEIGHTS))
    model = guide_model(base, keras.layers.Rescaling(1 / 127.5, offset=-1), num_classes,
                        IMAGE_SIZE, b5_augmentation())
    return model, base


def train_keras_guide(setup: FlowersSetup, stop: keras.callbacks.Callback) -> list[float]:
    """Frozen then fine-tuned, stopping when `stop` says so; returns val accuracy per epoch."""
    train, val = datasets(setup)
    model, base = build(setup.dataset.num_classes)
    compile_stage(model, base, "frozen")
    history = model.fit(train, validation_data=val, epochs=FROZEN_EPOCHS, callbacks=[stop],
                        verbose=0).history["val_accuracy"]
    if model.stop_training:
        return history
    compile_stage(model, base, "finetune")
    more = model.fit(train, validation_data=val, epochs=FINETUNE_EPOCHS, callbacks=[stop],
                     verbose=0)
    return history + more.history["val_accuracy"]
