"""The peer recipes of B6 and B9 in plain Keras, each as its authors document it.

Every recipe takes a `Backbone`, the fixed flowers split (`Data`) and a running `Clock`
(the wall-clock budget), and hands back the trained model and its per-epoch curve.
The numbers and where they come from:

fastai `Learner.fine_tune(epochs, base_lr=2e-3, freeze_epochs=1, lr_mult=100,
pct_start=0.3, div=5.0)` (fastai/callback/schedule.py):
  - one epoch with the body frozen but its BatchNorm trainable (`train_bn=True`), one
    cycle at `slice(2e-3)`: the head at 2e-3, the body's BatchNorm at 2e-4 (a bare
    slice gives every earlier group lr/10); `pct_start=0.99`, `div=25`;
  - then `base_lr /= 2`, everything unfrozen, one cycle at `slice(1e-5, 1e-3)`
    (base_lr / lr_mult for the body, base_lr for the head: `default_split`, which
    fastai uses for architectures without their own split, gives two groups),
    `pct_start=0.3`, `div=5`, `div_final=1e5`, momentum cycled 0.95 -> 0.85 -> 0.95;
  - one optimizer for both cycles: `Learner.fit(..., reset_opt=False)` creates it only
    `if reset_opt or not self.opt` (fastai/learner.py), so the head's and BatchNorm's
    Adam moments carry over the unfreeze; a weight frozen in the first cycle gets no
    gradient there, so its own step count starts at the unfreeze;
  - Adam with `sqr_mom=0.99`, `eps=1e-5` and true weight decay 0.01, none on BatchNorm
    and biases (`wd_bn_bias=False`); plain cross-entropy; batch 64;
  - the `vision_learner` head: concat(avg, max) pool, BN, dropout 0.25, Linear 512
    (no bias), ReLU, BN, dropout 0.5, Linear (no bias), kaiming-normal init;
  - every BatchNorm, body and head, at PyTorch's `momentum=0.1`
    (`running = 0.9 * running + 0.1 * batch`), which is Keras `momentum=0.9`; a Keras
    model file keeps its own (0.99 in the Lite0, 0.999 in MobileNetV2), so it is reset;
  - `aug_transforms()` (fastai/vision/augment.py): flip with p 0.5; rotate 10 deg, zoom
    up to 1.1 and lighting 0.2 (brightness and contrast) each with `p_affine` /
    `p_lighting` 0.75, drawn per image; reflection padding. Its perspective warp (0.2)
    is left out: Keras's RandomPerspective fills with black, an artefact fastai's
    reflection does not have.
  `fine_tune`'s epoch count is the user's choice, so the second cycle is stretched
  over whatever budget is left (progress = seconds spent / seconds left).

Keras guide (keras.io/guides/transfer_learning, fchollet, end-to-end example): see
`benchmarks.keras_guide`, which freezes BatchNorm for fine-tuning as the current guide
says. Batch 64 (the guide's `batch_size = 64`); 20 frozen epochs, then fine-tuning at
Adam 1e-5. Its 20 : 10 epoch split, with a fine-tuning epoch costing about three
frozen ones, gives the frozen stage 40 % of the time, so it ends at 20 epochs or 40 %
of the budget, whichever comes first; fine-tuning runs until the budget is spent.

MediaPipe Model Maker image classifier (google-ai-edge/mediapipe,
mediapipe/model_maker/python/vision/image_classifier/): `hyperparameters.HParams`
sets learning_rate 0.001, batch_size 2, epochs 10, do_fine_tuning False, l1 0,
l2 1e-4, label_smoothing 0.1, do_data_augmentation True, decay_samples 10000 * 256,
warmup_epochs 2; `model_options` dropout_rate 0.2; `BaseHParams.shuffle` False (the
file list is shuffled once, in `Dataset.from_folder`). `image_classifier.py`: a
frozen feature vector, Dropout, Dense softmax with an L1L2 kernel regulariser;
CategoricalCrossentropy(label_smoothing); `_create_optimizer`: init_lr =
learning_rate * batch_size / 256, CosineDecay(alpha 0) over max(steps * epochs,
decay_samples // batch_size) steps after a linear warm-up of warmup_epochs, RMSprop
(rho 0.9, momentum 0.9, epsilon 1e-3). `vision/core/image_preprocessing.py`: training
images get an Inception random crop (area 0.08-1, aspect 3/4-4/3, min covered 0.1,
10 attempts, else a centre crop) and a horizontal flip; evaluation a centre crop of
size / (size + 32) of the shorter side; both resized bilinearly. `model_spec.py`: the
EfficientNet-Lite0 spec keeps `ModelSpec`'s default `input_image_shape` [224, 224], so
every image is resized to 224 px (`MEDIAPIPE["image_size"]`) whatever the photos' size.

Thesis: its flower protocol, `tltk.recipes.flowers_thesis` (read from its config, not
restated here): the head (Dense 256 + dropout 0.5) on cached bottleneck features with
Adam 1e-3 for 30 epochs, then the top block (BatchNorm frozen, in inference mode) with
SGD 0.004, momentum 0.9, stepped down to 0.001 after 25 epochs, under
ImageDataGenerator-style augmentation: rotation 10, shifts 0.1, zoom 0.1, horizontal
flip, reflect fill. Its shear of 0.05 is in degrees, a no-op in effect, so it is left
out.

Each backbone keeps its own input scaling inside the model, so every model takes raw
0-255 RGB. Validation batches hold 32 images for every recipe: the batch size of an
evaluation changes its speed, not its result.

Example::

    clock = Clock(budget_s=360)
    trained = PEERS["fastai"](BACKBONES["mobilenetv2"](160), data, clock)
    trained.recorder.curve[-1]["val_top1"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from benchmarks import keras_guide
from benchmarks._flowers import SEED, SHARED, WEIGHTS
from benchmarks.keras_guide import batchnorm_layers
from tltk.optim.schedules import make_lr
from tltk.recipes import flowers_thesis

LITE0 = SHARED / "weights" / "efficientnet_lite0_imagenet.keras"
EVAL_BATCH = 32
OPEN_ENDED = 10_000  # epochs of a stage the budget, not an epoch count, ends
AUTOTUNE = tf.data.AUTOTUNE


# --- backbones ------------------------------------------------------------------

@dataclass(frozen=True)
class Backbone:
    """A pretrained feature-map model and how to feed it raw 0-255 RGB.

    A `.keras` model file (the Lite0, or a test's tiny stand-in) is cut at its
    `top_activation` layer and rescales inside; otherwise `path` holds MobileNetV2 weights.
    """

    name: str
    path: Path  # weights file (MobileNetV2) or whole model file (Lite0)
    size: int
    top_block: str  # name prefix of the first layer of the top block

    @property
    def model_file(self) -> bool:
        return self.path.suffix == ".keras"

    def load(self) -> keras.Model:
        """A fresh copy of the base, up to its last feature map."""
        if self.model_file:
            full = keras.models.load_model(self.path)
            return keras.Model(full.input, full.get_layer("top_activation").output,
                               name=f"{self.name}_features")
        base = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(self.size, self.size, 3))
        base.load_weights(str(self.path))
        return base

    def preprocess(self) -> keras.layers.Layer:
        # The model files rescale inside; MobileNetV2 wants [-1, 1].
        if self.model_file:
            return keras.layers.Identity()
        return keras.layers.Rescaling(1 / 127.5, offset=-1)


BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "lite0": lambda size: Backbone("lite0", LITE0, size, "block7a_"),
    "mobilenetv2": lambda size: Backbone("mobilenetv2", WEIGHTS, size, "block_16_"),
}


# --- data -----------------------------------------------------------------------

@dataclass
class Data:
    """The fixed split as file paths and labels; each recipe decodes on its own clock."""

    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def decoded(data: Data, split: str, order: np.ndarray | None = None) -> tf.data.Dataset:
    """(uint8 image, label) of a split in a fixed order, decoded once and kept in memory."""
    index = np.arange(len(data.labels[split])) if order is None else order
    paths = np.asarray(data.paths[split])[index]
    labels = data.labels[split][index].astype("int32")

    def load(path, label):
        raw = tf.io.read_file(path)
        return tf.io.decode_image(raw, channels=3, expand_animations=False), label

    return tf.data.Dataset.from_tensor_slices((paths, labels)).map(load, AUTOTUNE).cache()


def resize(size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """Stretch to size x size (bilinear, float 0-255): every recipe's eval, most trains."""
    return lambda image: tf.image.resize(image, (size, size))


def batches(images: tf.data.Dataset, transform, batch: int, shuffle: bool = False,
            onehot: int | None = None, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (transform(image), label); labels one-hot when `onehot` classes."""
    if shuffle:  # the whole split is the buffer: a true per-epoch shuffle
        images = images.shuffle(100_000, seed=SEED, reshuffle_each_iteration=True)

    def prepare(image, label):
        target = tf.one_hot(label, onehot) if onehot else label
        return transform(image), target

    ds = images.map(prepare, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


# --- budget and per-epoch record ------------------------------------------------

class Clock:
    """Seconds since a recipe started (data loading and model building included)."""

    def __init__(self, budget_s: float):
        self.budget_s, self.start, self.start_wall = budget_s, time.perf_counter(), time.time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Recorder(keras.callbacks.Callback):
    """Stops a fit at the first batch past the budget (or a stage's `until`) and records
    (stage, seconds, val top-1, losses) per epoch, keeping `watched`'s best weights.

    Keras still validates an epoch it stops early, so the last point is at the budget.
    """

    def __init__(self, clock: Clock, watched: keras.Model):
        super().__init__()
        self.clock, self.watched = clock, watched
        self.curve, self.stage, self.until = [], "", None
        self.best, self.best_weights = -1.0, None

    def spent(self) -> bool:
        limit = self.clock.budget_s if self.until is None else min(self.until,
                                                                   self.clock.budget_s)
        return self.clock.elapsed() >= limit

    def on_train_batch_end(self, batch, logs=None):
        if self.spent():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val = float(logs.get("val_accuracy", math.nan))
        self.curve.append({"stage": self.stage, "seconds": round(self.clock.elapsed(), 2),
                           "val_top1": round(val, 4), "loss": _round(logs.get("loss")),
                           "val_loss": _round(logs.get("val_loss"))})
        if val > self.best:
            self.best, self.best_weights = val, self.watched.get_weights()
        if self.spent():
            self.model.stop_training = True


def _round(value) -> float | None:
    return None if value is None else round(float(value), 4)


def fit_stage(model, recorder: Recorder, stage: str, train, val, epochs: int,
              callbacks=(), until: float | None = None, setup: Callable | None = None) -> None:
    """One stage's `fit`, skipped when the budget is spent and an epoch is on record.

    `setup` (unfreezing, compiling) runs only for a stage that runs: a recompiled but
    unused model would trace its evaluation graph again (seconds on two cores).
    """
    recorder.until = None
    if recorder.spent() and recorder.curve:
        return
    if setup:
        setup()
    recorder.stage, recorder.until = stage, until
    # shuffle=False: the datasets shuffle themselves (MediaPipe's, by its default, not).
    model.fit(train, validation_data=val, epochs=epochs, callbacks=[recorder, *callbacks],
              shuffle=False, verbose=0)
    recorder.until = None


@dataclass
class Trained:
    """What a recipe hands back: the model, its record, and how it wants eval images."""

    model: keras.Model
    recorder: Recorder
    eval_transform: Callable[[tf.Tensor], tf.Tensor]
    onehot: int | None = None  # classes, when the model's loss wants one-hot labels

    def top1(self, data: Data, split: str) -> float:
        """Top-1 on a split with the compiled `accuracy` (no new graph to trace)."""
        ds = batches(decoded(data, split), self.eval_transform, EVAL_BATCH,
                     onehot=self.onehot)
        return round(float(self.model.evaluate(ds, verbose=0, return_dict=True)["accuracy"]), 4)


# --- fastai ---------------------------------------------------------------------

class FastaiAdam(keras.optimizers.Optimizer):
    """fastai's Adam: debiased moments (`sqr_mom` 0.99, eps 1e-5), true weight decay
    (lr * wd, skipped on 1-D weights: BatchNorm and biases) and the body's rate scaled
    by `body_mult` (discriminative rates). `mom` and `body_mult` are variables, so one
    optimizer serves both of `fine_tune`'s cycles; each weight counts its own steps
    (fastai's `step_stat`), so a weight frozen in the first cycle debiases from its first.

    Build it with every weight it will ever train (`build(variables)`), frozen ones too:
    a Keras optimizer refuses weights it was not built with.

    Example::

        opt = FastaiAdam(lambda v: id(v) in body)
        opt.body_mult.assign(0.01)  # the body at a hundredth of the head's rate
    """

    def __init__(self, in_body: Callable, wd: float = 0.01, sqr_mom: float = 0.99,
                 eps: float = 1e-5, name: str = "fastai_adam"):
        super().__init__(learning_rate=1e-3, name=name)
        self.in_body, self.wd, self.sqr_mom, self.eps = in_body, wd, sqr_mom, eps
        self.mom = keras.Variable(0.9, trainable=False, name="mom")
        self.body_mult = keras.Variable(1.0, trainable=False, name="body_mult")

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._avg, self._sqr = self.add_optimizer_variables(var_list, ["avg", "sqr"])
        self._steps = [self.add_variable((), initializer="zeros", name=f"step_{i}")
                       for i in range(len(var_list))]
        self._body = [bool(self.in_body(v)) for v in var_list]
        self._decay = [len(v.shape) > 1 for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        lr = ops.cast(learning_rate, variable.dtype)
        if self._body[i]:
            lr = lr * ops.cast(self.body_mult, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        mom = ops.cast(self.mom, variable.dtype)
        self.assign_add(self._steps[i], 1.0)
        step = ops.cast(self._steps[i], variable.dtype)
        if self._decay[i]:
            self.assign(variable, variable * (1 - lr * self.wd))
        avg, sqr = self._avg[i], self._sqr[i]
        self.assign(avg, mom * avg + (1 - mom) * grad)
        self.assign(sqr, self.sqr_mom * sqr + (1 - self.sqr_mom) * ops.square(grad))
        debias1 = 1 - ops.power(mom, step)
        debias2 = 1 - ops.power(ops.cast(self.sqr_mom, variable.dtype), step)
        self.assign_sub(variable, lr / debias1 * avg / (ops.sqrt(sqr / debias2) + self.eps))


def one_cycle(pct: float, lr_max: float, pct_start: float, div: float,
              div_final: float = 1e5, moms=(0.95, 0.85, 0.95)) -> tuple[float, float]:
    """fastai's `fit_one_cycle` at progress `pct`: (learning rate, momentum).

    Example:
        >>> one_cycle(0.0, 1e-3, 0.3, 5.0)
        (0.0002, 0.95)
    """
    def cos(start, end, pos):
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2

    if pct < pct_start:
        pos = pct / pct_start
        return cos(lr_max / div, lr_max, pos), cos(moms[0], moms[1], pos)
    pos = (pct - pct_start) / (1 - pct_start)
    return cos(lr_max, lr_max / div_final, pos), cos(moms[1], moms[2], pos)


class OneCycle(keras.callbacks.Callback):
    """Sets a `FastaiAdam`'s rate and momentum before every batch.

    Progress is steps done / `steps`, or, with `clock`, seconds spent / the seconds
    left at the first batch: the cycle then ends exactly at the budget. (The first
    batch, not the fit's start: tracing the train step takes ~30 s on two cores.)
    """

    def __init__(self, lr_max: float, pct_start: float, div: float,
                 steps: int | None = None, clock: Clock | None = None):
        super().__init__()
        self.args, self.steps, self.clock = (lr_max, pct_start, div), steps, clock

    def on_train_begin(self, logs=None):
        self.step, self.t0 = 0, None

    def on_train_batch_begin(self, batch, logs=None):
        if self.clock:
            if self.t0 is None:
                self.t0, self.seconds = time.perf_counter(), max(self.clock.left(), 1e-3)
            pct = (time.perf_counter() - self.t0) / self.seconds
        else:
            pct = self.step / self.steps
        lr, mom = one_cycle(min(pct, 1.0), *self.args)
        self.model.optimizer.learning_rate.assign(lr)
        self.model.optimizer.mom.assign(mom)
        self.step += 1


FASTAI_BN_MOMENTUM = 0.9  # PyTorch's BatchNorm momentum 0.1, in Keras's convention
FASTAI_P_AFFINE = FASTAI_P_LIGHTING = 0.75  # aug_transforms' p_affine and p_lighting


class RandomApply(keras.layers.Layer):
    """`layer` applied to each image of a batch with probability `rate`, else the image
    unchanged (fastai draws every transform per image with its own p).

    Example::

        RandomApply(keras.layers.RandomRotation(10 / 360), 0.75)(images, training=True)
    """

    def __init__(self, layer: keras.layers.Layer, rate: float, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.layer, self.rate = layer, rate
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        draw = keras.random.uniform(ops.shape(images)[:1], seed=self.seed_generator)
        chosen = ops.reshape(draw < self.rate, (-1, 1, 1, 1))
        return ops.where(chosen, self.layer(images, training=True), images)

    def compute_output_shape(self, input_shape):
        return input_shape


def fastai_augmentation() -> keras.Sequential:
    # No layer seeds: the training seed (keras.utils.set_random_seed) drives the draws.
    sometimes = RandomApply
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal"),  # Flip(p=0.5)
        sometimes(keras.layers.RandomRotation(10 / 360, fill_mode="reflect"), FASTAI_P_AFFINE),
        # Negative zoom factors zoom in: up to 1.1x is a crop of 1 / 1.1 of the side.
        sometimes(keras.layers.RandomZoom((1 / 1.1 - 1, 0.0), fill_mode="reflect"),
                  FASTAI_P_AFFINE),
        # fastai's lighting 0.2 shifts mid-grey by about +-0.1 and scales contrast
        # by 0.8-1.25.
        sometimes(keras.layers.RandomBrightness(0.1), FASTAI_P_LIGHTING),
        sometimes(keras.layers.RandomContrast(0.2), FASTAI_P_LIGHTING),
    ], name="fastai_augmentation")


def fastai_head(features, num_classes: int):
    def batchnorm(x):  # PyTorch's eps and momentum
        return keras.layers.BatchNormalization(momentum=FASTAI_BN_MOMENTUM, epsilon=1e-5)(x)

    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(features),
                                         keras.layers.GlobalMaxPooling2D()(features)])
    x = keras.layers.Dropout(0.25)(batchnorm(pooled))
    x = keras.layers.Dense(512, use_bias=False, kernel_initializer="he_normal")(x)
    x = keras.layers.Dropout(0.5)(batchnorm(keras.layers.ReLU()(x)))
    return keras.layers.Dense(num_classes, use_bias=False, kernel_initializer="he_normal",
                              activation="softmax")(x)


def fastai_fine_tune(bb: Backbone, data: Data, clock: Clock) -> Trained:
    """fastai's `fine_tune`: a frozen one-cycle epoch, then one cycle on everything,
    with one optimizer throughout."""
    train = batches(decoded(data, "train"), resize(bb.size), 64, shuffle=True)
    val = batches(decoded(data, "val"), resize(bb.size), EVAL_BATCH)
    model, base = fastai_model(bb, data.num_classes)
    rec = Recorder(clock, model)
    optimizer = fastai_optimizer(model, base)
    _train_body(base, batchnorm_only=True)  # freeze() with train_bn=True
    optimizer.body_mult.assign(0.1)  # slice(2e-3): earlier groups at lr/10
    _compile_fastai(model, optimizer)
    cycle = OneCycle(2e-3, pct_start=0.99, div=25.0, steps=int(train.cardinality()))
    fit_stage(model, rec, "frozen", train, val, 1, [cycle])
    cycle = OneCycle(1e-3, pct_start=0.3, div=5.0, clock=clock)
    fit_stage(model, rec, "unfrozen", train, val, OPEN_ENDED, [cycle],
              setup=lambda: _unfreeze_fastai(model, base, optimizer))
    return Trained(model, rec, resize(bb.size))


def fastai_model(bb: Backbone, num_classes: int) -> tuple[keras.Model, keras.Model]:
    """(classifier, body): augmentation, the body and `vision_learner`'s head, every
    BatchNorm at PyTorch's momentum."""
    base = bb.load()
    for layer in batchnorm_layers(base):
        layer.momentum = FASTAI_BN_MOMENTUM
    inputs = keras.Input((bb.size, bb.size, 3))
    # No training=False: as in PyTorch's train mode, BatchNorm uses batch statistics.
    features = base(bb.preprocess()(fastai_augmentation()(inputs)))
    return keras.Model(inputs, fastai_head(features, num_classes)), base


def fastai_optimizer(model: keras.Model, base: keras.Model) -> FastaiAdam:
    """The one FastaiAdam of a `fine_tune`, built with every weight either cycle trains."""
    body = {id(v) for v in base.weights}
    optimizer = FastaiAdam(lambda v: id(v) in body)
    _train_body(base, batchnorm_only=False)
    optimizer.build(model.trainable_variables)
    return optimizer


def _train_body(base: keras.Model, batchnorm_only: bool) -> None:
    base.trainable = True
    for layer in base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = is_bn or not batchnorm_only


def _unfreeze_fastai(model: keras.Model, base: keras.Model, optimizer: FastaiAdam) -> None:
    _train_body(base, batchnorm_only=False)
    optimizer.body_mult.assign(1 / 100)  # slice(1e-3 / 100, 1e-3)
    _compile_fastai(model, optimizer)  # the same optimizer: its moments carry over


def _compile_fastai(model: keras.Model, optimizer: FastaiAdam) -> None:
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])


# --- Keras guide ----------------------------------------------------------------

def keras_guide_recipe(bb: Backbone, data: Data, clock: Clock) -> Trained:
    """The guide's frozen stage (20 epochs or 40 % of the budget), then Adam 1e-5 with
    BatchNorm frozen; batches of 64 as the guide's."""
    train = batches(decoded(data, "train"), resize(bb.size), keras_guide.GUIDE_BATCH,
                    shuffle=True)
    val = batches(decoded(data, "val"), resize(bb.size), EVAL_BATCH)
    base = bb.load()
    model = keras_guide.guide_model(base, bb.preprocess(), data.num_classes, bb.size,
                                    keras_guide.guide_augmentation())
    rec = Recorder(clock, model)
    keras_guide.compile_stage(model, base, "frozen")
    fit_stage(model, rec, "frozen", train, val, 20, until=0.4 * clock.budget_s)
    fit_stage(model, rec, "finetune", train, val, OPEN_ENDED,
              setup=lambda: keras_guide.compile_stage(model, base, "finetune"))
    return Trained(model, rec, resize(bb.size))


# --- MediaPipe Model Maker ------------------------------------------------------

MEDIAPIPE = {"learning_rate": 0.001, "batch_size": 2, "epochs": 10, "dropout": 0.2,
             "l2": 1e-4, "label_smoothing": 0.1, "decay_samples": 10000 * 256,
             "warmup_epochs": 2, "crop_padding": 32, "image_size": 224}


def mediapipe_train_crop(size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """Inception-style random crop and flip, as Model Maker's `preprocess_for_train`."""
    def crop(image):
        begin, box_size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        cropped = tf.slice(image, begin, box_size)
        # No valid crop in 10 attempts returns the whole image: then centre-crop.
        whole = tf.reduce_all(tf.equal(tf.shape(cropped), tf.shape(image)))
        cropped = tf.cond(whole, lambda: _centre_crop(image, size), lambda: cropped)
        return tf.image.random_flip_left_right(tf.image.resize(cropped, (size, size)))
    return crop


def _centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(image)
    side = tf.cast(size / (size + MEDIAPIPE["crop_padding"])
                   * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
    top, left = (shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2
    return image[top:top + side, left:left + side]


def mediapipe_eval(size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """Model Maker's `preprocess_for_eval`: centre crop, then resize."""
    return lambda image: tf.image.resize(_centre_crop(image, size), (size, size))


def mediapipe_recipe(bb: Backbone, data: Data, clock: Clock) -> Trained:
    """Model Maker's defaults: a frozen feature vector, dropout and one Dense layer."""
    hp, n = MEDIAPIPE, data.num_classes
    order = np.random.default_rng(SEED).permutation(len(data.labels["train"]))
    train = batches(decoded(data, "train", order), mediapipe_train_crop(bb.size),
                    hp["batch_size"], onehot=n, drop_remainder=True)
    val = batches(decoded(data, "val"), mediapipe_eval(bb.size), EVAL_BATCH, onehot=n)
    model = _mediapipe_model(bb, n)
    model.compile(_mediapipe_optimizer(int(train.cardinality())),
                  keras.losses.CategoricalCrossentropy(label_smoothing=hp["label_smoothing"]),
                  metrics=["accuracy"])
    rec = Recorder(clock, model)
    fit_stage(model, rec, "train", train, val, hp["epochs"])
    return Trained(model, rec, mediapipe_eval(bb.size), onehot=n)


def _mediapipe_model(bb: Backbone, num_classes: int) -> keras.Model:
    base = bb.load()
    base.trainable = False  # do_fine_tuning=False
    inputs = keras.Input((bb.size, bb.size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(bb.preprocess()(inputs), training=False))
    x = keras.layers.Dropout(MEDIAPIPE["dropout"])(x)
    regulariser = keras.regularizers.L1L2(0.0, MEDIAPIPE["l2"])
    outputs = keras.layers.Dense(num_classes, activation="softmax",
                                 kernel_regularizer=regulariser)(x)
    return keras.Model(inputs, outputs)


def _mediapipe_optimizer(steps_per_epoch: int) -> keras.optimizers.Optimizer:
    hp = MEDIAPIPE
    init_lr = hp["learning_rate"] * hp["batch_size"] / 256
    decay = max(steps_per_epoch * hp["epochs"], hp["decay_samples"] // hp["batch_size"])
    # Keras's warm-up shifts the cosine by the warm-up steps; over >= 1.28 M decay steps
    # that changes the rate by under 1e-6 of itself.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay, alpha=0.0, warmup_target=init_lr,
        warmup_steps=hp["warmup_epochs"] * steps_per_epoch)
    return keras.optimizers.RMSprop(schedule, rho=0.9, momentum=0.9, epsilon=1e-3)


# --- thesis ---------------------------------------------------------------------

THESIS = flowers_thesis.config()  # the protocol's numbers, in one place

def thesis_augmentation() -> keras.Sequential:
    return keras.Sequential([
        keras.layers.RandomRotation(10 / 360, fill_mode="reflect"),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect"),
        keras.layers.RandomZoom(0.1, fill_mode="reflect"),
        keras.layers.RandomFlip("horizontal"),
    ], name="thesis_augmentation")


def thesis_recipe(bb: Backbone, data: Data, clock: Clock) -> Trained:
    """The flowers protocol: an Adam head on cached bottleneck features, then SGD on the
    top block at 0.004, stepped to 0.001 (`tltk.recipes.flowers_thesis`)."""
    head_stage, finetune = THESIS.stages
    base, extractor, head, model = _thesis_models(bb, data.num_classes)
    rec = Recorder(clock, model)
    images = {split: decoded(data, split) for split in ("train", "val")}
    _thesis_head(extractor, head, images, data, bb.size, rec, head_stage)
    train = batches(images["train"], resize(bb.size), THESIS.batch_size, shuffle=True)
    val = batches(images["val"], resize(bb.size), EVAL_BATCH)

    def unfreeze():
        _unfreeze_top_block(base, bb.top_block)
        rate = make_lr(finetune, int(train.cardinality()))  # 0.004, then 0.001 at epoch 25
        model.compile(keras.optimizers.SGD(rate, momentum=finetune.momentum),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])

    fit_stage(model, rec, "finetune", train, val, OPEN_ENDED, setup=unfreeze)
    if not model.compiled:  # the budget ended it in the bottleneck stage
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return Trained(model, rec, resize(bb.size))


def _thesis_models(bb: Backbone, num_classes: int):
    """(base, feature extractor, head, whole classifier); the last two share the head."""
    base = bb.load()
    base.trainable = False
    inputs = keras.Input((bb.size, bb.size, 3))
    pool = keras.layers.GlobalAveragePooling2D()
    extractor = keras.Model(inputs, pool(base(bb.preprocess()(inputs), training=False)))
    spec = THESIS.head  # Dense 256, dropout 0.5
    head = keras.Sequential([
        keras.Input((extractor.output_shape[-1],)),
        keras.layers.Dense(spec.units, activation="relu"), keras.layers.Dropout(spec.dropout),
        keras.layers.Dense(num_classes, activation="softmax")], name="head")
    augmented = base(bb.preprocess()(thesis_augmentation()(inputs)), training=False)
    return base, extractor, head, keras.Model(inputs, head(pool(augmented)))


def _thesis_head(extractor, head, images: dict, data: Data, size: int,
                 rec: Recorder, stage) -> None:
    """The bottleneck stage: features computed once (unaugmented), the head fit on them."""
    def features(split):
        ds = batches(images[split], resize(size), EVAL_BATCH)
        return extractor.predict(ds.map(lambda x, y: x), verbose=0)

    x_train, x_val = features("train"), features("val")
    head.compile(keras.optimizers.Adam(stage.lr), "sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    train = tf.data.Dataset.from_tensor_slices((x_train, data.labels["train"]))
    train = train.shuffle(len(x_train), seed=SEED).batch(THESIS.batch_size)
    val = tf.data.Dataset.from_tensor_slices((x_val, data.labels["val"])).batch(EVAL_BATCH)
    fit_stage(head, rec, "bottleneck", train, val, stage.epochs)


def _unfreeze_top_block(base: keras.Model, prefix: str) -> None:
    """Layers from the top block's first one up trainable, BatchNorm frozen."""
    base.trainable = True
    names = [layer.name for layer in base.layers]
    first = next(i for i, name in enumerate(names) if name.startswith(prefix))
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)


PEERS: dict[str, Callable[[Backbone, Data, Clock], Trained]] = {
    "fastai": fastai_fine_tune, "keras_guide": keras_guide_recipe,
    "mediapipe": mediapipe_recipe, "thesis": thesis_recipe,
}
