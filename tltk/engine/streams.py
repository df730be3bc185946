"""Seeded input streams: the batches of epoch e depend only on (seed, e).

`epoch_stream` shuffles every epoch with its own seed and `seeded_augment` draws
each batch's augmentation from (seed, epoch, batch), so a stream that starts at
epoch k (a resumed run, see `tltk.engine.checkpoint`) holds the same batches as the
tail of one that started at 0.

Example:
    >>> import tensorflow as tf
    >>> examples = tf.data.Dataset.from_tensor_slices((tf.range(6), tf.range(6)))
    >>> full = list(epoch_stream(examples, 6, 3, seed=0, first=0, epochs=2, buffer=6))
    >>> tail = list(epoch_stream(examples, 6, 3, seed=0, first=1, epochs=2, buffer=6))
    >>> all((a[0].numpy() == b[0].numpy()).all() for a, b in zip(full[2:], tail))
    True
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def epoch_seed(seed: int, *keys: int) -> int:
    """A seed that depends only on `seed` and `keys` (e.g. the epoch), below 2**31.

    Example:
        >>> epoch_seed(0, 3) == epoch_seed(0, 3) != epoch_seed(0, 4)
        True
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] >> 1)


def epoch_stream(examples: tf.data.Dataset, count: int, batch_size: int, seed: int,
                 first: int, epochs: int, buffer: int, augment=None,
                 mix=None, gather=None) -> tf.data.Dataset:
    """Batches of epochs `first`..`epochs - 1`, each epoch `count` shuffled examples.

    Epoch e shuffles with its own seed, so a stream that starts at epoch k (a resume)
    holds the same batches as the tail of one that started at 0. `augment` is a
    `seeded_augment` function; each batch gets the seed (epoch seed, batch index).
    `mix(images, labels, seed)` (e.g. mixup) then runs on the augmented batch with a
    seed derived from the same pair. With `gather(indices) -> (x, y)`, `examples`
    are indices (`tf.data.Dataset.range`): only indices are shuffled, and each batch is
    gathered whole from arrays held once (no example-by-example copies, no shuffle
    buffer of images).
    """
    parts = []
    for epoch in range(first, epochs):
        part_seed = epoch_seed(seed, epoch)
        # No reshuffle: the order is a function of the part's seed alone, not of how
        # many times (or where, under a distribution strategy) the part was iterated.
        part = examples.shuffle(buffer, seed=part_seed, reshuffle_each_iteration=False)
        part = part.take(count).batch(batch_size)
        if gather is not None:
            part = part.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        parts.append(part.enumerate().map(
            lambda i, xy, s=part_seed: (xy[0], xy[1], tf.stack([tf.constant(s, tf.int64), i]))))
    stream = _concatenate(parts)
    if augment is None and mix is None:
        return stream.map(lambda x, y, _: (x, y)).prefetch(tf.data.AUTOTUNE)

    def transform(x, y, batch_seed):
        if augment is not None:
            x = augment(x, batch_seed)
        if mix is not None:
            x, y = mix(x, y, tf.random.experimental.stateless_fold_in(batch_seed, 1))
        return x, y

    stream = stream.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return stream.prefetch(tf.data.AUTOTUNE)


def array_gather(features: np.ndarray, labels: np.ndarray, dtype=None):
    """`gather(indices) -> (features[indices], labels[indices])` over a (memory-mapped)
    array, for `epoch_stream` and `batches`: each batch is read from it on demand, and
    cast to `dtype` when given.

    Example:
        >>> gather = array_gather(np.zeros((6, 2), np.float16), np.arange(6))
        >>> [t.shape.as_list() for t in gather(tf.constant([4, 1]))]
        [[2, 2], [2]]
    """
    labels = tf.constant(labels)

    def read(indices):
        return np.ascontiguousarray(features[indices])

    def gather(indices):
        x = tf.numpy_function(read, [indices], tf.as_dtype(features.dtype), stateful=False)
        x.set_shape([None, *features.shape[1:]])
        return (x if dtype is None else tf.cast(x, dtype)), tf.gather(labels, indices)

    return gather


def batches(count: int, batch_size: int, gather) -> tf.data.Dataset:
    """The `count` examples in order, in batches gathered with `gather` (e.g. validation)."""
    return (tf.data.Dataset.range(count).batch(batch_size).map(gather)
            .prefetch(tf.data.AUTOTUNE))


def _concatenate(parts: list[tf.data.Dataset]) -> tf.data.Dataset:
    # A balanced tree keeps the nesting shallow for long stages.
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return _concatenate(parts[:middle]).concatenate(_concatenate(parts[middle:]))


class _BatchSeed(keras.random.SeedGenerator):
    """A SeedGenerator that hands out seeds derived from the current batch's seed.

    Keras's own generator hands out seeds in call order, which a parallel tf.data map
    does not fix; derived from an explicit per-batch seed, the draws are stateless.
    The n-th draw of a batch folds in n, so several draws never share a seed.
    """

    def __init__(self, seed: int):
        super().__init__(seed)
        self.batch_seed, self.draws = None, 0

    def next(self, ordered=True):
        if self.batch_seed is None:
            return super().next(ordered)
        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.batch_seed, self.draws - 1)


def seeded_augment(layer: keras.layers.Layer):
    """Wrap a fresh augmentation layer as `(images, seed [2]) -> images`.

    The layer's random draws then depend only on the seed passed with each batch.

    Example:
        >>> from tltk.data.augment import RandomAffine
        >>> augment = seeded_augment(RandomAffine(rotation_range=30, seed=0))
        >>> images = tf.random.stateless_uniform([2, 16, 16, 3], seed=[1, 2])
        >>> first = augment(images, tf.constant([7, 0], tf.int64))
        >>> bool(tf.reduce_all(first == augment(images, tf.constant([7, 0], tf.int64))))
        True
    """
    generator = _BatchSeed(getattr(layer, "seed", None) or 0)
    # RandomAffine draws from `seed_generator`; Keras's preprocessing layers (RandAugment,
    # which hands its generator to all its sub-layers' draws) from `generator`.
    for attribute in ("seed_generator", "generator"):
        if hasattr(layer, attribute):
            setattr(layer, attribute, generator)

    def apply(images, seed):
        generator.batch_seed, generator.draws = seed, 0
        try:
            return layer(images, training=True)
        finally:
            generator.batch_seed = None

    return apply
