"""The comparison script for B5: transfer learning as the Keras guide teaches it.

A frozen base called with `training=False`, augmentation layers inside the model, a
dropout + linear head trained with Adam; then the whole base unfrozen and trained on
at a low Adam rate. Images come through a plain cached tf.data pipeline. It runs on
the same flowers-128 split and MobileNetV2 weights as tltk, so only the method differs.

Example::

    history = train_keras_guide(setup, stop=TimeToTarget(0.7))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from benchmarks._flowers import BATCH_SIZE, IMAGE_SIZE, WEIGHTS, FlowersSetup

FROZEN_EPOCHS = 10
FINETUNE_EPOCHS = 10
FINETUNE_LR = 1e-5


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


def build(num_classes: int) -> tuple[keras.Model, keras.Model]:
    base = keras.applications.MobileNetV2(weights=None, include_top=False,
                                          input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.load_weights(str(WEIGHTS))
    base.trainable = False
    augmentation = keras.Sequential([
        keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(10 / 360),
        keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomZoom(0.1)])
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs), base


def train_keras_guide(setup: FlowersSetup, stop: keras.callbacks.Callback) -> list[float]:
    """Frozen then fine-tuned, stopping when `stop` says so; returns val accuracy per epoch."""
    train, val = datasets(setup)
    model, base = build(setup.dataset.num_classes)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=FROZEN_EPOCHS, callbacks=[stop],
                        verbose=0).history["val_accuracy"]
    if model.stop_training:
        return history
    base.trainable = True
    model.compile(keras.optimizers.Adam(FINETUNE_LR), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    more = model.fit(train, validation_data=val, epochs=FINETUNE_EPOCHS, callbacks=[stop],
                     verbose=0)
    return history + more.history["val_accuracy"]
