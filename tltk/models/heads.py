"""Grafting a classification head onto a backbone.

The classifier is `image (raw RGB 0..255) -> preprocess -> backbone -> pool -> head`.
`pool` is global average pooling (or flatten, for the scratch baseline); `head` is a
small model over the pooled vector:

    BatchNormalization -> N x [Dense(units, relu) -> BatchNormalization -> Dropout]
    -> Dense(num_classes, softmax, float32)

(the BatchNormalization layers only with `HeadConfig.batchnorm`, the default).

Keeping the head a separate model over pooled features lets a frozen stage train it
on cached features and share the very same layers with the whole classifier.

Example:
    >>> from tltk.models.backbones import build_backbone, get_backbone
    >>> spec = get_backbone("mobilenetv2")
    >>> base = build_backbone(spec, "none", 96)
    >>> model = build_classifier(base, spec, num_classes=5, head=HeadConfig(layers=2))
    >>> model.get_layer("head").layers[-1].dtype_policy.name
    'float32'
"""

from __future__ import annotations

import keras

from tltk.config import HeadConfig
from tltk.models.backbones import block_layers
from tltk.models.preprocessing import preprocess_layer
from tltk.models.spec import BackboneSpec


def build_head(input_dim: int, num_classes: int, cfg: HeadConfig) -> keras.Model:
    """The head over pooled features, as a named sub-model."""
    inputs = keras.Input((input_dim,), name="pooled_features")
    x = _head_norm(inputs, cfg, "head_bn")
    for i in range(1, cfg.layers + 1):
        x = keras.layers.Dense(cfg.units, activation="relu", name=f"head_dense{i}")(x)
        x = _head_norm(x, cfg, f"head_bn{i}")
        x = keras.layers.Dropout(cfg.dropout, name=f"head_dropout{i}")(x)
    # float32 output keeps softmax and the loss stable under mixed precision.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs, name="head")


def _head_norm(x, cfg: HeadConfig, name: str):
    return keras.layers.BatchNormalization(name=name)(x) if cfg.batchnorm else x


def pooling_layer(spec: BackboneSpec) -> keras.layers.Layer:
    if spec.pooling == "flatten":
        return keras.layers.Flatten(name="head_pool")
    return keras.layers.GlobalAveragePooling2D(name="head_pool")


def build_classifier(backbone: keras.Model, spec: BackboneSpec, num_classes: int,
                     head: HeadConfig) -> keras.Model:
    """Graft pooling and a new head onto `backbone`; the result takes raw RGB 0..255."""
    size = backbone.input_shape[1]
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess_layer(spec.preprocess)(inputs)
    # A pretrained base always runs in inference mode: BatchNorm keeps its ImageNet
    # statistics even in blocks being fine-tuned (the loss doesn't spike at the switch).
    x = backbone(x, training=False) if spec.pretrained else backbone(x)
    pooled = pooling_layer(spec)(x)
    outputs = build_head(pooled.shape[-1], num_classes, head)(pooled)
    return keras.Model(inputs, outputs, name=f"{spec.name}_classifier")


def source_classifier(spec: BackboneSpec, image_size: int) -> keras.Model:
    """Raw RGB 0..255 -> preprocess -> the model file's own classifier (its kept top).

    Example::

        source_classifier(get_backbone("lite0.keras"), 224).output_shape
        # (None, 1000)
    """
    shape = (image_size, image_size, 3)
    inputs = keras.Input(shape, name="image")
    x = preprocess_layer(spec.preprocess)(inputs)
    return keras.Model(inputs, spec.top_builder(shape)(x), name=f"{spec.name}_source")


def feature_extractor(model: keras.Model) -> keras.Model:
    """The classifier up to the pooled features (shares its layers)."""
    return keras.Model(model.inputs, model.get_layer("head_pool").output,
                       name="feature_extractor")


def split_at_blocks(model: keras.Model, spec: BackboneSpec, blocks: list[str],
                    train_batchnorm: bool = False):
    """Split a classifier where its trainable part begins, for activation caching.

    With no trainable blocks, the cut is the pooled features: (feature extractor,
    head). Otherwise it is the output of the layer just below the lowest trainable
    block: (image -> that activation, activation -> class probabilities). Both
    halves share the classifier's layers, so training the upper half trains it.
    With `train_batchnorm`, the trainable blocks run in training mode (their trainable
    BatchNorm uses batch statistics). Returns (lower, upper, name of the layer at the cut).
    """
    if not blocks:
        return feature_extractor(model), model.get_layer("head"), "head_pool"
    base = backbone_of(model)
    groups = block_layers(base, spec)
    first = min(base.layers.index(groups[b][0]) for b in blocks)
    boundary = base.layers[first - 1].output
    lower_base = keras.Model(base.input, boundary, name="frozen_part")
    inputs = model.inputs[0]
    lower = keras.Model(inputs, lower_base(model.get_layer("preprocess")(inputs)),
                        name="activation_extractor")
    top = keras.Model(boundary, base.output, name="trainable_part")
    act = keras.Input(boundary.shape[1:], name="activations")
    # As in the whole classifier, the pretrained part runs in inference mode.
    features = top(act) if train_batchnorm else top(act, training=False)
    probs = model.get_layer("head")(model.get_layer("head_pool")(features))
    return lower, keras.Model(act, probs, name="upper_classifier"), base.layers[first - 1].name


def training_view(model: keras.Model) -> keras.Model:
    """The classifier with its backbone called in training mode; it shares every layer.

    `build_classifier` calls a pretrained backbone with `training=False`, so its
    BatchNorm runs in inference mode whatever its `trainable` flag. Fitting this view
    instead, trainable BatchNorm layers use batch statistics and update their moving
    statistics; frozen ones still run in inference mode, as Keras 3 runs every frozen
    BatchNorm. Dropout inside the backbone, if it has any, is active too.

    Example::

        training_view(model).get_layer("head") is model.get_layer("head")
        # True
    """
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    x = backbone_of(model)(model.get_layer("preprocess")(inputs))
    outputs = model.get_layer("head")(model.get_layer("head_pool")(x))
    return keras.Model(inputs, outputs, name=f"{model.name}_training")


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a classifier built by `build_classifier`."""
    head, pool, pre = model.get_layer("head"), model.get_layer("head_pool"), "preprocess"
    skip = {head.name, pool.name, pre, model.layers[0].name}
    (base,) = [layer for layer in model.layers if layer.name not in skip]
    return base
