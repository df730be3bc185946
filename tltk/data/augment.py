"""Fused ImageDataGenerator-equivalent augmentation: one affine warp per image, in graph.

`RandomAffine` draws the parameters of the legacy `ImageDataGenerator` (IDG) per image,
composes rotation, shift, shear, zoom and flips into ONE 3x3 matrix and resamples each
image once with `ImageProjectiveTransformV3` (bilinear), batched, with no numpy.

Conventions (taken from IDG's source, which this module reproduces on purpose):

* a matrix maps OUTPUT pixel coordinates (x=column, y=row, pixel centres on integers)
  to INPUT coordinates, as both `scipy.ndimage.affine_transform` and TF's op do;
* IDG builds its matrix in (x, y) order after swapping axes, so its `tx` (drawn from
  `height_shift_range * height`) moves content along x (columns) and `ty` (drawn from
  `width_shift_range * width`) along y (rows); `zx` scales x, `zy` scales y;
* IDG centres the transform at x=(height-1)/2, y=(width-1)/2, the true centre only
  for square images (tltk's are square);
* `theta` and `shear` are in degrees; flips are applied after the affine part.

Example::

    aug = RandomAffine(seed=0)  # the thesis defaults
    ds = ds.batch(32).map(lambda x, y: (aug(x, training=True), y))
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

FILL_MODES = ("reflect", "nearest", "constant", "wrap")
PIXEL_MAX = 255.0  # images are float 0..255; brightness clips to this range like IDG's PIL
FLIP_PROBABILITY = 0.5
IMAGE_RANK = 4  # [batch, height, width, channels]
# Columns of the single uniform draw per image, one per random parameter.
_DRAWS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_h", "flip_v", "brightness")


def make_augmenter(config, seed: int) -> keras.layers.Layer:
    """The training augmentation of a `RunConfig`: its `augment_policy`, seeded.

    `affine` is `RandomAffine` with `config.augment`; `randaugment` is Keras's
    `RandAugment` (2 ops per image at `config.randaugment_factor`). Both take uint8 or
    float 0..255 batches and return float32 0..255.

    Example::

        make_augmenter(RunConfig(augment_policy="randaugment"), seed=0).num_ops
        # 2
    """
    if config.augment_policy == "randaugment":
        return keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                        factor=config.randaugment_factor, seed=seed)
    return RandomAffine(**vars(config.augment), seed=seed)


def _matrix(a, b, c, d, e, f):
    """[[a, b, c], [d, e, f], [0, 0, 1]], batched over the broadcast shape of the entries."""
    entries = [tf.cast(v, tf.float32) for v in (a, b, c, d, e, f)]
    shape = functools.reduce(tf.broadcast_dynamic_shape, [tf.shape(v) for v in entries])
    a, b, c, d, e, f = (tf.broadcast_to(v, shape) for v in entries)
    zero, one = tf.zeros(shape), tf.ones(shape)
    rows = [tf.stack(row, axis=-1) for row in ((a, b, c), (d, e, f), (zero, zero, one))]
    return tf.stack(rows, axis=-2)


def affine_matrix(theta, tx, ty, shear, zx, zy, flip_h, flip_v, height, width):
    """Output-to-input matrix of IDG's `apply_transform` for the given parameters.

    Arguments are scalars or equally shaped tensors (one entry per image); `theta` and
    `shear` are in degrees, `tx`/`ty` in pixels, flips are booleans. Returns float32
    `[..., 3, 3]` in (x=column, y=row) coordinates, ready for `warp_affine`.

    Example:
        >>> m = affine_matrix(10.0, 0.0, 0.0, 0.0, 1.0, 1.0, False, False, 64, 64)
        >>> m.shape
        TensorShape([3, 3])
    """
    theta = tf.cast(theta, tf.float32) * (math.pi / 180.0)
    shear = tf.cast(shear, tf.float32) * (math.pi / 180.0)
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    rotation = _matrix(tf.cos(theta), -tf.sin(theta), 0.0, tf.sin(theta), tf.cos(theta), 0.0)
    shift = _matrix(1.0, 0.0, tx, 0.0, 1.0, ty)
    shearing = _matrix(1.0, -tf.sin(shear), 0.0, 0.0, tf.cos(shear), 0.0)
    zoom = _matrix(zx, 0.0, 0.0, 0.0, zy, 0.0)
    # IDG's centre: its first (x) coordinate is offset by the height, the second by the width.
    cx, cy = (height - 1.0) / 2.0, (width - 1.0) / 2.0
    to_centre = _matrix(1.0, 0.0, cx, 0.0, 1.0, cy)
    from_centre = _matrix(1.0, 0.0, -cx, 0.0, 1.0, -cy)
    core = to_centre @ rotation @ shift @ shearing @ zoom @ from_centre
    # IDG flips the warped image, i.e. it reads the warp at mirrored output coordinates.
    sign_x = tf.where(tf.cast(flip_h, tf.bool), -1.0, 1.0)
    sign_y = tf.where(tf.cast(flip_v, tf.bool), -1.0, 1.0)
    flips = _matrix(sign_x, 0.0, (1.0 - sign_x) / 2.0 * (width - 1.0),
                    0.0, sign_y, (1.0 - sign_y) / 2.0 * (height - 1.0))
    return core @ flips


def warp_affine(images, matrices, fill_mode="reflect", cval=0.0):
    """Resample `[B, H, W, C]` images once with per-image (or shared) 3x3 matrices.

    Example:
        >>> m = affine_matrix(0.0, 3.0, 0.0, 0.0, 1.0, 1.0, False, False, 32, 32)
        >>> warp_affine(tf.zeros([2, 32, 32, 3]), m).shape
        TensorShape([2, 32, 32, 3])
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    batch = tf.shape(images)[0]
    matrices = tf.broadcast_to(tf.cast(matrices, tf.float32), tf.stack([batch, 3, 3]))
    # The op takes the first 8 entries, row-major; the last one is 1 for affine maps.
    transforms = tf.reshape(matrices, tf.stack([batch, 9]))[:, :8]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=tf.cast(cval, tf.float32), interpolation="BILINEAR",
        fill_mode=fill_mode.upper())
    return tf.ensure_shape(warped, images.shape)


def _pair(value, name, around=None):
    """A (lo, hi) range from a pair, or from a float z as [around - z, around + z]."""
    if isinstance(value, (int, float)) and around is not None:
        return (around - float(value), around + float(value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    raise ValueError(f"{name} must be a float or a [lo, hi] pair, got {value!r}")


def _check_shift(value, name):
    """IDG reads shifts below 1 as fractions of the image size; only those are supported."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} is a fraction of the image size in [0, 1), got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="tltk")
class RandomAffine(keras.layers.Layer):
    """IDG-equivalent random affine augmentation, fused into one warp per image.

    Keyword names, units and sampling follow `ImageDataGenerator`: `rotation_range` and
    `shear_range` are in DEGREES (IDG converts shear with `np.deg2rad`, so the thesis's
    0.05 is a 0.05-degree shear), shifts are fractions of the image size, a float
    `zoom_range` z draws zx and zy independently from [1-z, 1+z], and `brightness_range`
    multiplies pixels by a factor from [lo, hi], clipped to 0..255. Inputs are float
    images with values 0..255, `[B, H, W, C]` or `[H, W, C]`; identity when not training.
    Seeded layers are reproducible for a given sequence of calls (TensorFlow backend).

    Example:
        >>> aug = RandomAffine(rotation_range=10, zoom_range=0.1, seed=0)
        >>> aug(tf.zeros([8, 64, 64, 3]), training=True).shape
        TensorShape([8, 64, 64, 3])
    """

    def __init__(self, rotation_range=10.0, width_shift_range=0.1, height_shift_range=0.1,
                 shear_range=0.05, zoom_range=0.1, horizontal_flip=True, vertical_flip=False,
                 fill_mode="reflect", cval=0.0, brightness_range=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        self.rotation_range = abs(float(rotation_range))
        self.width_shift_range = _check_shift(width_shift_range, "width_shift_range")
        self.height_shift_range = _check_shift(height_shift_range, "height_shift_range")
        self.shear_range = abs(float(shear_range))
        self._zoom_bounds = _pair(zoom_range, "zoom_range", around=1.0)
        # Kept as given (float or [lo, hi]) so the config reads like IDG's arguments.
        as_pair = isinstance(zoom_range, (list, tuple))
        self.zoom_range = list(self._zoom_bounds) if as_pair else float(zoom_range)
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = fill_mode
        self.cval = float(cval)
        self.brightness_range = (None if brightness_range is None
                                 else list(_pair(brightness_range, "brightness_range")))
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def sample_transform(self, batch_size, height, width):
        """Per-image parameters, distributed as IDG's `get_random_transform`.

        Returns a dict of `[batch_size]` tensors with IDG's keys (`theta, tx, ty, shear,
        zx, zy, flip_horizontal, flip_vertical, brightness`; `brightness` is None when
        `brightness_range` is).
        """
        shape = tf.stack([tf.cast(batch_size, tf.int32), len(_DRAWS)])
        draws = keras.random.uniform(shape, seed=self.seed_generator, dtype="float32")
        u = dict(zip(_DRAWS, tf.unstack(draws, axis=1), strict=True))

        def symmetric(key, bound):
            return (2.0 * u[key] - 1.0) * bound

        zoom_lo, zoom_hi = self._zoom_bounds  # lo == hi == 1 gives exactly 1, as in IDG
        zoom = {k: zoom_lo + (zoom_hi - zoom_lo) * u[k] for k in ("zx", "zy")}
        brightness = None
        if self.brightness_range is not None:
            lo, hi = self.brightness_range
            brightness = lo + (hi - lo) * u["brightness"]
        return {
            "theta": symmetric("theta", self.rotation_range),
            "tx": symmetric("tx", self.height_shift_range) * tf.cast(height, tf.float32),
            "ty": symmetric("ty", self.width_shift_range) * tf.cast(width, tf.float32),
            "shear": symmetric("shear", self.shear_range),
            **zoom,
            "flip_horizontal": (u["flip_h"] < FLIP_PROBABILITY) & self.horizontal_flip,
            "flip_vertical": (u["flip_v"] < FLIP_PROBABILITY) & self.vertical_flip,
            "brightness": brightness,
        }

    def apply_transform(self, images, params):
        """Warp images with FIXED parameters, like `ImageDataGenerator.apply_transform`.

        `params` uses IDG's keys; values are scalars (shared) or `[B]` tensors. Missing
        keys mean no change; channel shifts are not supported.

        Example:
            >>> RandomAffine().apply_transform(tf.zeros([32, 32, 3]), {"theta": 15.0}).shape
            TensorShape([32, 32, 3])
        """
        if params.get("channel_shift_intensity") is not None:
            raise ValueError("channel_shift_intensity is not supported by RandomAffine")
        images, unbatched = self._as_batch(images)
        if not (images.dtype.is_floating or images.dtype == tf.uint8):
            images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        matrices = affine_matrix(
            params.get("theta", 0.0), params.get("tx", 0.0), params.get("ty", 0.0),
            params.get("shear", 0.0), params.get("zx", 1.0), params.get("zy", 1.0),
            params.get("flip_horizontal", False), params.get("flip_vertical", False),
            shape[1], shape[2])
        # uint8 pixels warp about 1.7x faster than float32 (a quarter of the memory
        # traffic); bilinear results are then rounded to whole levels, as in a saved image.
        out = warp_affine(images, matrices, self.fill_mode, self.cval)
        if out.dtype == tf.uint8:
            out = tf.cast(out, tf.float32)
        if params.get("brightness") is not None:
            factor = tf.reshape(tf.cast(params["brightness"], out.dtype), [-1, 1, 1, 1])
            out = tf.clip_by_value(out * factor, 0.0, PIXEL_MAX)
        return out[0] if unbatched else out

    def call(self, images, training=True):
        images = tf.convert_to_tensor(images)
        if not training:
            return tf.cast(images, self.compute_dtype)
        batch, unbatched = self._as_batch(images)
        shape = tf.shape(batch)
        out = self.apply_transform(batch, self.sample_transform(shape[0], shape[1], shape[2]))
        out = tf.cast(out, self.compute_dtype)
        return out[0] if unbatched else out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "shear_range": self.shear_range,
            "zoom_range": self.zoom_range,
            "horizontal_flip": self.horizontal_flip,
            "vertical_flip": self.vertical_flip,
            "fill_mode": self.fill_mode,
            "cval": self.cval,
            "brightness_range": self.brightness_range,
            "seed": self.seed,
        }

    @staticmethod
    def _as_batch(images):
        """Images as `[B, H, W, C]`, and whether a single `[H, W, C]` image was given."""
        images = tf.convert_to_tensor(images)
        if images.shape.rank == IMAGE_RANK - 1:
            return images[tf.newaxis], True
        if images.shape.rank != IMAGE_RANK:
            raise ValueError(f"expected [B, H, W, C] or [H, W, C] images, got {images.shape}")
        return images, False
