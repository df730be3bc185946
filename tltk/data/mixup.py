"""Mixup (Zhang et al. 2018): train on convex combinations of example pairs.

Each example is mixed with a partner from the same batch (a random permutation) with
its own weight lam ~ Beta(alpha, alpha): x = lam x_i + (1 - lam) x_j, and the one-hot
labels likewise, so the model must be trained with categorical (not sparse)
cross-entropy. Beta draws come from two Gamma draws, G1 / (G1 + G2). Draws are
seeded and differ from epoch to epoch.

Example::

    train = make_pipeline(split, 64, 32, training=True, seed=0)
    train = mixup_batches(train, alpha=0.2, num_classes=5, seed=0)
    model.compile(optimizer, loss="categorical_crossentropy")
"""

from __future__ import annotations

import tensorflow as tf

# Why not `keras.layers.MixUp`: a resumed run must see the very mixes of the epochs it
# re-runs, so every draw here is a stateless function of (run seed, epoch, batch).
# Keras's layer draws its permutation and weights from its own `SeedGenerator`, whose
# state advances per call and is not saved with tltk's epoch checkpoints; feeding it
# per-batch seeds would also change every draw, so the mixup figures already published
# (README, B1, B6) could no longer be reproduced.


def beta_weights(n, alpha: float, seed) -> tf.Tensor:
    """`n` samples of Beta(alpha, alpha) as G1 / (G1 + G2), Gi ~ Gamma(alpha, 1).

    `seed` is a stateless seed, a shape [2] integer tensor.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    g1 = tf.random.stateless_gamma([n], seeds[0], alpha=alpha)
    g2 = tf.random.stateless_gamma([n], seeds[1], alpha=alpha)
    # Both draws underflow to 0 only for tiny alpha; then either endpoint is as likely.
    return tf.where(g1 + g2 > 0, g1 / tf.maximum(g1 + g2, 1e-30), 0.5)


def mix_batch(images, labels, num_classes: int, alpha: float, seed):
    """Mix one batch `(images [B, ...], int labels [B])` -> `(images, one-hot [B, C])`.

    Example:
        >>> images, labels = tf.zeros([4, 8, 8, 3]), tf.constant([0, 1, 2, 0])
        >>> x, y = mix_batch(images, labels, num_classes=3, alpha=0.4, seed=[0, 1])
        >>> x.shape, y.shape, round(float(tf.reduce_sum(y[0])), 4)  # each row sums to 1
        (TensorShape([4, 8, 8, 3]), TensorShape([4, 3]), 1.0)
    """
    images = tf.convert_to_tensor(images)
    seed = tf.cast(seed, tf.int64)
    weight_seed, perm_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    n = tf.shape(images)[0]
    lam = beta_weights(n, alpha, weight_seed)
    partner = tf.random.experimental.stateless_shuffle(tf.range(n), perm_seed)
    onehot = tf.one_hot(tf.reshape(tf.cast(labels, tf.int32), [-1]), num_classes)
    lam_x = tf.reshape(tf.cast(lam, images.dtype), [-1] + [1] * (images.shape.rank - 1))
    mixed = lam_x * images + (1 - lam_x) * tf.gather(images, partner)
    lam_y = lam[:, None]
    return mixed, lam_y * onehot + (1 - lam_y) * tf.gather(onehot, partner)


def mixup_batches(ds: tf.data.Dataset, alpha: float, num_classes: int,
                  seed: int = 0) -> tf.data.Dataset:
    """Apply mixup to every batch of a batched `(float images, int labels)` dataset.

    Example::

        mixup_batches(train_ds, alpha=0.2, num_classes=5, seed=0)
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    if not images_are_float(ds):
        raise ValueError("mixup needs float images; cast them before mixing")
    # A fresh random seed per batch and per epoch, reproducible from `seed`.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    pairs = tf.data.Dataset.zip((ds, seeds))
    return pairs.map(lambda batch, s: mix_batch(*batch, num_classes, alpha, s),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def images_are_float(ds: tf.data.Dataset) -> bool:
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError("mixup expects a dataset of (images, labels) batches")
    return spec[0].dtype.is_floating
